"""Transport: moving frames between nodes without copying them.

Owns the node-facing sender and subscription (`frame_transport`, the API: `frame_sender` and
`frame_subscription` on the FrameRef topic with the DDS fallback, `local_frames` for the in-process
hand-over both share, `frame_access` to read a FrameRef's pixels), the in-process frame store
(`frame_store`), frames across processes through Eclipse iceoryx2 (`iox_frames`: pure; `iox_refs`: their
FrameRefs), frames on the GPU shared by CUDA IPC and named by iceoryx2 samples (`cuda_ipc`, `cuda_frames`),
and Embedding / MemoryContext handed over by reference in composed mode (`intra_process`).

Only those five FrameRef modules and `iox_refs` import rclpy or the messages; every other module here is a
pure core (numpy, the standard library, torch only where CUDA is asked for) that a GPU machine without ROS
can import. May import: `vidaction_ros.ingest` (image decoding), the shared modules (`qos`, `conversions`,
`stats`). Nothing here is imported at package import time: import the module you need.
"""
