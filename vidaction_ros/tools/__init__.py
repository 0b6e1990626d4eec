"""Tools: the command-line programs and their libraries, above the nodes.

Owns the demo (`demo`), bag making / inspection / playback (`bag_cli`, `bag_writer`, `bag_player`), replay
evaluation (`evaluate` and its parts), replay metrics and labels (`eval_metrics`), threshold calibration
(`calibrate` and its parts), backend parity (`parity`), realistic embedding streams for the memory benches
(`memory_data`) and the progress bar (`progress`).

May import every stage, the nodes and the shared modules; nothing in the package imports a tool.
"""
