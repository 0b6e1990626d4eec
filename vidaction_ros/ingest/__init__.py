"""Ingest: where frames enter the pipeline (pure cores, no rclpy).

Owns the frame sources (video file, V4L2, RTSP/HTTP) and the capture thread (`frame_source`), rosbag2
reading (`bags`), raw and compressed image decoding (`image_codec`, `compressed`), the reasoning-rate
subsampler (`rate`) and the scene-change gate (`scene_gate`).

May import: the standard library, numpy, OpenCV, `rosbags`, and the shared helpers (`vidaction_ros.stats`,
`vidaction_ros.paths`). Never a later stage, the nodes or the tools. Modules are imported one by one
(`from vidaction_ros.ingest.rate import RateLimiter`) so a user of the gate never pays for OpenCV's video
I/O or the bag library.
"""
