"""Old command lines kept working: the backends now live in `vidaction_ros.perception.backends`.

Only `python -m vidaction_ros.backends.clip_export HF_DIR OUT_DIR` (the Jetson route's export step, in
scripts users already have) is kept here; import from `vidaction_ros.perception.backends` in code.
"""
