"""Helpers of bench/soak.py, one concern a module: procfs (process metrics from /proc), monitor (the listening
rclpy node), pipeline (input video, starting/stopping and sampling one pipeline run), analysis (statistics,
summaries, pass/fail targets), report (printed table and JSON). Bench code, not part of vidaction_ros."""
