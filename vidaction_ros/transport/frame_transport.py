"""Frame transport between nodes. Nodes call FrameSender.send and resolve / borrow and never learn the mode.

Modes (FrameRef.transport):
  inproc - composed in one process: pixels by reference through frame_store (zero copies); the topic
           carries only the small FrameRef.
  iox    - across processes on one machine, through Eclipse iceoryx2 (iox_frames): the camera loans a
           shared-memory sample, fills it, sends it with a fixed header and an event; consumers are woken by
           the event and view the sample in place until their callback returns (no DDS on the hot path, no
           torn frame: a held sample is never rewritten). The FrameRef still goes out on DDS for observers
           (iox_refs resolves it). The default.
  cuda   - frames on the GPU across processes: device buffers shared by CUDA IPC (cuda_frames), named by
           iceoryx2 samples that travel exactly as iox frames do (holding the sample holds the buffer).
  image  - portable fallback (another machine, another container): the downscaled pixels travel inline in
           FrameRef.image (a sensor_msgs/Image).
The optional interop topic publishes a plain sensor_msgs/Image for rviz, rqt and `ros2 bag record`.
(FrameRef.TRANSPORT_SHM named the project's own shared-memory ring, replaced by iceoryx2: such a FrameRef,
from an older build, is FrameLost with that reason.)

Loans (like ROS 2 loaned messages): `view = sender.loan(h, w)` lends the producer a writable array to fill in
place (cv2.resize(src, (w, h), dst=view)), then `sender.send_loaned(msg, view)` publishes it;
`sender.abandon(view)` or an exception inside `with sender.loaned(msg, h, w) as view:` gives it back unsent.
iox: the array is the iceoryx2 sample itself; inproc, image and cuda lend a fresh array, so the same producer
code runs in every mode. send(msg, image) still copies.

Direct delivery (hot path without DDS): the FrameRef is always published on DDS (rviz, bags, the escalation
node, and the fallback), but a FrameSubscription also hears of each frame directly: from an inproc sender in
this process through a queue (the DDS copy that follows is dropped as a duplicate of (store, slot,
generation)), from an iox or cuda camera through its own iceoryx2 reader (DDS copies of those frames are not
dispatched). The DDS copy of a frame someone was handed directly is published dds_delay_s (2 ms) later from a
background thread, so that DDS work does not compete with the hot path for the CPU. Callbacks get a private
FrameRef and run one at a time on the subscription's own thread (dispatch='thread'), in the node's executor
through a GuardCondition (dispatch='executor'), or for in-process senders on the sender's thread
(dispatch='inline', composed mode's lowest latency, when the sender may wait: a live camera's capture thread
may not, so its inline subscribers take frames on their own thread). VIDACTION_DIRECT=off (or direct=False)
makes both ends plain DDS (comparisons).

Modules: frame_sender (FrameSender), frame_subscription (FrameSubscription), frame_access (resolve, borrow,
host_array), local_frames (the in-process hand-over both sides share). Import from here.
"""
from .frame_access import MODES, borrow, host_array, resolve
from .frame_sender import DDS_DELAY_S, DEFAULT_MAX_FRAME, FrameSender
from .frame_subscription import DISPATCH, FrameSubscription
from .local_frames import direct_enabled

__all__ = ['MODES', 'DISPATCH', 'DDS_DELAY_S', 'DEFAULT_MAX_FRAME', 'FrameSender', 'FrameSubscription', 'borrow',
           'direct_enabled', 'host_array', 'resolve']
