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
"""
from __future__ import annotations

import collections
import itertools
import operator
import os
import threading
import time
import weakref
from contextlib import contextmanager

import numpy as np
from rclpy.qos import HistoryPolicy
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import Image

from .. import qos
from ..conversions import bgr_to_image, image_to_bgr
from . import iox_refs
from .frame_store import FrameLost, find_store, open_store
from ..msg import FrameRef

MODES = ('inproc', 'iox', 'image', 'cuda')
DEFAULT_MAX_FRAME = (1920, 1080)   # (width, height) of the largest frame when the caller does not say
_store_ids = itertools.count()
DISPATCH = ('thread', 'executor', 'inline')
DDS_DELAY_S = 0.002   # DDS copy of a frame handed over directly: this much later (see FrameSender)
_IOX_TRANSPORTS = (FrameRef.TRANSPORT_IOX, FrameRef.TRANSPORT_CUDA)   # frames iceoryx2 delivers
IOX_POLL_S = 0.2      # a consumer looks for its camera's iceoryx2 service this often until it is there
_WARNED: set[str] = set()
_WARNED_LOCK = threading.Lock()


def direct_enabled() -> bool:
    """False when VIDACTION_DIRECT is off/0/false/no: DDS only (for comparisons)."""
    return os.environ.get('VIDACTION_DIRECT', 'on').strip().lower() not in ('0', 'off', 'false', 'no')


def _warn_once(node, key: str, message: str) -> None:
    with _WARNED_LOCK:
        if key in _WARNED:
            return
        _WARNED.add(key)
    node.get_logger().warning(message)


class _FrameRefCopier:
    """Private copies of FrameRefs, cheaper than a CDR round trip: every scalar and string leaf of the message
    read with one attrgetter call (snapshot) and applied to a FrameRef built ahead of time, straight-line code
    generated once from the message definition (only leaves that differ from a fresh message are set).
    Measured at 30 Hz on 2 cores (cold caches): ~40 + ~60 us against ~230 + ~400 us for serialize +
    deserialize. A message with pixels inline (a non-empty sequence) is copied through CDR."""

    def __init__(self, cls):
        self.cls = cls
        leaves, sequences = [], []
        self.ok = self._walk(cls(), '', leaves, sequences)
        if not self.ok:
            return
        self._leaves = len(leaves)
        self.get_all = operator.attrgetter(*(leaves + sequences))
        self._apply = self._compile_apply(leaves, self.get_all(cls())[:self._leaves])

    def _walk(self, msg, prefix, leaves, sequences) -> bool:
        for name, kind in msg.get_fields_and_field_types().items():
            # rosidl keeps each field in the slot '_<name>' behind a validating property: the copier reads and
            # writes the slots (C-level descriptors), its values being those of a valid message of the type.
            slot = '_' + name
            path = prefix + (slot if slot in getattr(type(msg), '__slots__', ()) else name)
            value = getattr(msg, name)
            if hasattr(value, 'get_fields_and_field_types'):
                if not self._walk(value, path + '.', leaves, sequences):
                    return False
            elif kind.startswith('sequence<'):
                sequences.append(path)
            elif '[' in kind or kind.startswith('wstring'):
                return False                     # fixed arrays, wstrings: CDR
            else:
                leaves.append(path)
        return True

    @staticmethod
    def _compile_apply(paths, defaults):
        """apply(values, msg): set every leaf whose value differs from a fresh message's, straight-line."""
        lines = ['def apply(values, msg):']
        parents = {'': 'msg'}
        for index, path in enumerate(paths):
            parent, _, leaf = path.rpartition('.')
            if not all(part.isidentifier() for part in path.split('.')):
                raise ValueError(f'unexpected field path {path!r}')
            if parent not in parents:
                for prefix in [parent[:i] for i, c in enumerate(parent) if c == '.'] + [parent]:
                    if prefix not in parents:
                        above, _, attr = prefix.rpartition('.')
                        parents[prefix] = f'p{len(parents)}'
                        lines.append(f'    {parents[prefix]} = {parents[above]}.{attr}')
            lines.append(f'    if values[{index}] != DEFAULTS[{index}]: {parents[parent]}.{leaf} = values[{index}]')
        lines.append('    return msg')
        namespace = {'DEFAULTS': tuple(defaults)}
        exec(compile('\n'.join(lines), '<_FrameRefCopier.apply>', 'exec'), namespace)   # noqa: S102 - own code
        return namespace['apply']

    def snapshot(self, msg):
        """The values of msg's leaves: all a private copy needs; None when msg has pixels inline."""
        if not self.ok:
            return None
        values = self.get_all(msg)
        if any(values[self._leaves:]):
            return None
        return values[:self._leaves]

    def copy(self, msg, snapshot=None, fresh=None):
        """A private copy of msg (into `fresh` when given): an in-process subscriber's own FrameRef."""
        snap = snapshot or self.snapshot(msg)
        if snap is None:
            return deserialize_message(serialize_message(msg), self.cls)
        return self._apply(snap, fresh if fresh is not None else self.cls())


_COPIER = _FrameRefCopier(FrameRef)


class _Local:
    """A frame from a sender in this process, waiting for its private copy."""
    __slots__ = ('msg', 'snapshot')

    def __init__(self, msg, snapshot):
        self.msg, self.snapshot = msg, snapshot


# In-process FrameSubscriptions by (context, resolved topic): an inproc FrameSender hands them each frame directly.
_LOCAL: dict[tuple[int, str], list] = {}
_LOCAL_LOCK = threading.Lock()
_LOCAL_VERSION = [0]          # bumped on every (un)registration: senders cache their lookup until it moves


def _local_subscribers(context, topic: str) -> list['FrameSubscription']:
    with _LOCAL_LOCK:
        refs = _LOCAL.get((id(context), topic))
        if not refs:
            return []
        subs = [ref() for ref in refs]
        live = [sub for sub in subs if sub is not None and not sub.closed]
        if len(live) != len(refs):
            refs[:] = [weakref.ref(sub) for sub in live]
        return live


class FrameSender:
    def __init__(self, node, mode: str, topic: str = 'camera/frame', lockstep: bool = False,
                 interop_topic: str = '', slots: int = 8, max_frame: tuple[int, int] = DEFAULT_MAX_FRAME,
                 qos_profile=None, direct: bool = True, dds_delay_s: float = DDS_DELAY_S):
        """max_frame: (width, height) of the largest bgr8 frame send() will get (iox sizes its samples, cuda its
        device buffers from it; pass the camera's max_width/max_height). slots: inproc frames kept.
        qos_profile: overrides qos.frame_qos(lockstep) (benches compare transports under one profile).
        direct: also hand frames to FrameSubscriptions without DDS (inproc: in-process queue; iox / cuda:
        iceoryx2 wakes the camera's readers either way). Off, the FrameRef on DDS is the only notice.
        dds_delay_s: when a subscription was handed the frame directly, its FrameRef is published on DDS this
        much later, from a background thread, so that the DDS work (here and in every subscriber) does not
        compete for the CPU with the hot path it just started; DDS-only subscribers (rviz, bags, the escalation
        node) get it that much later. 0: at once, inline. Frames nobody was handed are published at once either
        way (in order with any still waiting)."""
        if mode not in MODES:
            raise ValueError(f'unknown transport {mode!r}; choose one of {MODES}')
        if mode == 'cuda':
            from . import cuda_ipc
            if not cuda_ipc.available():     # before any entity is created: nothing to clean up
                raise RuntimeError('transport cuda needs torch with a CUDA device in the camera process; this '
                                   'one has none (use transport iox)')
        self.mode = mode
        self.node = node
        self.publisher = node.create_publisher(FrameRef, topic, qos_profile or qos.frame_qos(lockstep))
        self.interop = node.create_publisher(Image, interop_topic, qos.IMAGE) if interop_topic else None
        self.store = None
        self.cuda = None
        self.iox = None
        self.direct = direct and direct_enabled()
        self._context = node.context
        self._topic = self.publisher.topic_name
        self._loan = None                 # iox: the sample's Loan; inproc/image/cuda: the lent array
        self.dds_delay_s = max(0.0, float(dds_delay_s))
        self._deferred: collections.deque = collections.deque()   # (due monotonic s, FrameRef, snapshot)
        self._deferred_cv = threading.Condition()
        self._deferred_thread: threading.Thread | None = None
        self._closing = False
        self._local: list = []            # in-process FrameSubscriptions of our topic (cached lookup)
        self._local_version = -1
        self.counts = {'sent': 0, 'loaned': 0, 'abandoned': 0, 'local': 0}
        # False: the thread that sends must never wait for a consumer (a live camera's capture thread: a
        # blocked grab leaves older frames in the driver's queue), so in-process subscriptions with
        # dispatch='inline' take our frames on their own thread instead of this one.
        self.may_wait = True
        width, height = max_frame
        if mode == 'inproc':
            # Unique per sender: two cameras in one process never share slots.
            self.store = open_store(f'{node.get_fully_qualified_name()}#{os.getpid()}#{next(_store_ids)}', slots)
        elif mode in ('iox', 'cuda'):
            # IoxUnavailable (a RuntimeError: camera configure fails with the reason) without the library.
            from .iox_frames import IoxFramePublisher, service_name
            if mode == 'cuda':
                from .cuda_frames import CONTROL_BYTES, CudaFrameWriter
                self.cuda = CudaFrameWriter(width * height * 3)
                self._control_bytes = CONTROL_BYTES
            self.iox = IoxFramePublisher(service_name(self._topic, self._context.get_domain_id()),
                                         CONTROL_BYTES if mode == 'cuda' else width * height * 3)

    # -- copying send --------------------------------------------------------------------------------------
    def send(self, msg: FrameRef, image) -> FrameRef:
        """Fill the pixel part of msg for this mode and publish it. msg carries header, sequence, times."""
        self.abandon()                    # one loan in flight: an outstanding loan is given up
        if self.mode == 'iox':
            view = self.loan(int(image.shape[0]), int(image.shape[1]))
            view[:] = image
            return self.send_loaned(msg, view)
        msg.transport = self.mode
        msg.height, msg.width = int(image.shape[0]), int(image.shape[1])
        msg.encoding = 'bgr8'
        self._place(msg, image)
        self._publish(msg, image)
        return msg

    def _place(self, msg: FrameRef, image) -> None:
        """Put a whole frame where the inproc / cuda / image modes keep it and say where in msg (iox commits its
        loan instead)."""
        if self.mode == 'inproc':
            msg.store = self.store.name
            msg.slot, msg.generation = self.store.put(image)
        elif self.mode == 'cuda':
            loan = self.iox.loan_control(msg.height, msg.width, self._control_bytes)
            try:
                self.cuda.fill(loan, image)      # host frame up once, or device to device
            except BaseException:
                self.iox.abandon(loan)
                raise
            msg.store, msg.slot, msg.generation = self.iox.name, 0, msg.sequence
            self.iox.send(loan, **iox_refs.header_fields(msg))     # consumers are woken here
        else:
            msg.image = bgr_to_image(image, msg.header.stamp, msg.header.frame_id)

    # -- loaned send: the producer fills the transport's own buffer ------------------------------------------
    def loan(self, height: int, width: int) -> np.ndarray:
        """A writable HxWx3 uint8 (bgr8) array to fill in place, then hand to send_loaned (or abandon).
        iox: the iceoryx2 sample itself: fill it completely, and do not touch it after send_loaned (it is made
        read-only). cv2.resize(src, (width, height), dst=view) writes into it; check the result `is view`.
        inproc / image / cuda: a fresh host array (the composed consumer gets that very array; cuda uploads it at
        send_loaned: a host-side camera fills host memory either way). One loan at a time: a new loan abandons
        an outstanding one."""
        height, width = int(height), int(width)
        self.abandon()
        if self.mode == 'iox':
            self._loan = self.iox.loan(height, width)
            array = self._loan.array
        else:
            array = self._loan = np.empty((height, width, 3), np.uint8)
        self.counts['loaned'] += 1
        return array

    def _loaned_array(self):
        if self._loan is None:
            return None
        return self._loan.array if self.mode == 'iox' else self._loan

    @property
    def loaned_view(self) -> np.ndarray | None:
        """The array of the outstanding loan, None when there is none (lets a producer whose frames are
        sometimes loaned, sometimes not, tell which send to use: `image is sender.loaned_view`)."""
        return self._loaned_array()

    def send_loaned(self, msg: FrameRef, view: np.ndarray) -> FrameRef:
        """Publish the loaned array `view` (filled in place) as msg's frame. msg carries header, sequence, times."""
        if view is None or view is not self._loaned_array():
            raise ValueError('send_loaned: that array is not the outstanding loan of this sender (was it '
                             're-allocated, e.g. cv2.resize without dst=, or already sent?); use send() for arrays '
                             'of your own')
        msg.transport = self.mode
        msg.height, msg.width = int(view.shape[0]), int(view.shape[1])
        msg.encoding = 'bgr8'
        if self.mode == 'iox':
            msg.store, msg.slot, msg.generation = self.iox.name, 0, msg.sequence
            self.iox.send(self._loan, **iox_refs.header_fields(msg))   # consumers are woken here
            self._loan = None
        else:
            self._loan = None
            view.flags.writeable = False
            self._place(msg, view)
        self._publish(msg, view)
        return msg

    def abandon(self, view: np.ndarray | None = None) -> None:
        """Hand an outstanding loan back unpublished (view: that loan's array, or None for whichever is out)."""
        array = self._loaned_array()
        if array is None or (view is not None and view is not array):
            return
        if self.mode == 'iox':
            self.iox.abandon(self._loan)
        else:
            array.flags.writeable = False
        self._loan = None
        self.counts['abandoned'] += 1

    @contextmanager
    def loaned(self, msg: FrameRef, height: int, width: int):
        """with sender.loaned(msg, h, w) as view: fill view  ->  published at the end of the block; an exception
        inside the block abandons the loan instead (and propagates)."""
        view = self.loan(height, width)
        try:
            yield view
        except BaseException:
            self.abandon(view)
            raise
        self.send_loaned(msg, view)

    # -- publishing ----------------------------------------------------------------------------------------
    def _publish(self, msg: FrameRef, image) -> None:
        # Direct hand-over first (microseconds), then DDS (hundreds of microseconds of CPU here and in each
        # subscriber: deferred by dds_delay_s when someone was handed the frame, so it does not slow the hop).
        handed = 0
        snapshot = None
        if self.iox is not None and self.iox.subscribers():
            handed = 1                 # they were woken by iceoryx2: the DDS copy can wait its turn
            snapshot = _COPIER.snapshot(msg)
        elif self.direct and self.mode == 'inproc':
            if self._local_version != _LOCAL_VERSION[0]:
                self._local_version = _LOCAL_VERSION[0]
                self._local = _local_subscribers(self._context, self._topic)
            if self._local:
                snapshot = _COPIER.snapshot(msg)
                for sub in self._local:
                    if not sub.closed:
                        sub._deliver_local(msg, snapshot, self.may_wait)
                        handed += 1
                self.counts['local'] += handed
        if (handed and self.dds_delay_s > 0 and snapshot is not None) or self._deferred:
            self._defer(msg, snapshot, self.dds_delay_s if handed else 0.0)
        else:
            self.publisher.publish(msg)
        self.counts['sent'] += 1
        if self.interop is not None and self.interop.get_subscription_count() > 0:
            self.interop.publish(msg.image if self.mode == 'image' else
                                 bgr_to_image(host_array(image), msg.header.stamp, msg.header.frame_id))

    def _defer(self, msg: FrameRef, snapshot, delay_s: float) -> None:
        """Publish msg on DDS delay_s from now, from the background thread: as it was now (the message is
        rebuilt from its snapshot there, so a producer reusing msg meanwhile changes nothing)."""
        with self._deferred_cv:
            if self._closing:
                self.publisher.publish(msg)
                return
            self._deferred.append((time.monotonic() + delay_s, msg, snapshot))
            if self._deferred_thread is None:
                self._deferred_thread = threading.Thread(target=self._deferred_loop, name='frame-dds-publish',
                                                         daemon=True)
                self._deferred_thread.start()
            self._deferred_cv.notify()

    def _deferred_loop(self) -> None:
        while True:
            with self._deferred_cv:
                while not self._deferred and not self._closing:
                    self._deferred_cv.wait()
                if not self._deferred:
                    return                                        # closing, all published
                due, msg, snapshot = self._deferred[0]
                wait = due - time.monotonic()
                if wait > 0 and not self._closing:
                    self._deferred_cv.wait(wait)
                    continue
                self._deferred.popleft()
            try:
                self.publisher.publish(_COPIER.copy(msg, snapshot) if snapshot is not None else msg)
            except Exception as err:     # noqa: BLE001 - publisher destroyed or context shut down under us
                _warn_once(self.node, 'deferred-publish', f'deferred FrameRef publish failed: {err!r}')

    def flush(self, timeout: float = 5.0) -> None:
        """Publish the FrameRefs still waiting for their DDS turn now (close does this)."""
        with self._deferred_cv:
            thread, self._closing = self._deferred_thread, True
            self._deferred_cv.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._deferred_cv:
            self._deferred_thread, self._closing = None, False

    def stats(self) -> dict:
        """Counters for diagnostics: frames sent / loaned / abandoned / handed over in this process, iceoryx2's."""
        out = dict(self.counts)
        if self.iox is not None:
            out.update({f'iox_{k}': v for k, v in self.iox.counts.items()})
        return out

    def close(self) -> None:
        """Release what the mode holds (iceoryx2 ports; the services and their segments go with their last user;
        cuda: the device buffers); FrameRefs still waiting for DDS are published first."""
        self.flush()
        if self.iox is not None:
            self.abandon()
            self.iox.close()
        if self.cuda is not None:
            self.cuda.close()
        self._loan = None


def resolve(msg: FrameRef):
    """The bgr8 pixels a FrameRef points to. Raises FrameLost or ImageFormatError with the reason.
    inproc: the camera's very array (read-only by convention); iox: a private copy; image: decoded;
    cuda: a private copy on the GPU (a torch tensor; never through the host)."""
    if msg.transport == FrameRef.TRANSPORT_INPROC:
        return find_store(msg.store).get(msg.slot, msg.generation)
    if msg.transport in (FrameRef.TRANSPORT_IOX, FrameRef.TRANSPORT_CUDA):
        return iox_refs.resolve(msg)
    if msg.transport == FrameRef.TRANSPORT_IMAGE:
        return image_to_bgr(msg.image)
    if msg.transport == FrameRef.TRANSPORT_SHM:
        raise FrameLost('FrameRef of transport shm (the shared-memory ring of an older vidaction_ros build, '
                        'replaced by iceoryx2): run the camera from this build (transport iox)')
    raise FrameLost(f'unsupported transport {msg.transport!r} in FrameRef (this build supports {MODES})')


def host_array(frame) -> np.ndarray:
    """A frame as a host numpy array: a cuda-transport torch tensor is copied down (for consumers that run on
    the CPU); numpy arrays are returned as they are."""
    if isinstance(frame, np.ndarray):
        return frame
    return frame.detach().cpu().numpy()


@contextmanager
def borrow(msg: FrameRef):
    """Zero-copy access for the duration of a with-block:

        with transport.borrow(ref) as image:
            vector = embed(image)

    iox: the sample in place (read-only), held by this process's subscription until its callback returns;
    cuda: the device buffer in place (a torch tensor; the block's GPU work is waited for at its end, before
    the sample can be released); inproc and image: as resolve(). Never keep the array past the block."""
    if msg.transport != FrameRef.TRANSPORT_CUDA:
        yield iox_refs.view(msg) if msg.transport == FrameRef.TRANSPORT_IOX else resolve(msg)
        return
    frame = iox_refs.view(msg)
    try:
        yield frame
    finally:
        iox_refs.synchronize(frame)        # the block's GPU work is done before the sample can be released


# -- receiving: direct delivery plus DDS ---------------------------------------------------------------------
class FrameSubscription:
    """Subscribes to a FrameRef topic and hears of each frame by the fastest way it can:

        self.frames = FrameSubscription(self, 'camera/frame', self._on_frame, qos.frame_qos(lockstep))
        ...
        self.frames.destroy()      # in cleanup (destroying frames.subscription alone also stops it, lazily)

    - an inproc sender in this process (composed mode) hands frames over directly; the DDS copy that follows is
      dropped as a duplicate of (store, slot, generation);
    - an iox or cuda camera wakes this subscription's iceoryx2 reader (opened once the camera's service exists);
      DDS copies of those frames are not dispatched;
    - anything else (transport image, direct delivery off) arrives over DDS.
    The callback never sees an older frame of a store after a newer one (stale, counted). At most the QoS
    depth of frames wait (newest win, 'overflow').
    callback(msg) gets a private FrameRef and runs one call at a time: on this subscription's own thread
    (dispatch='thread': low latency; the callback may run concurrently with the node's other callbacks), in
    the node's executor (dispatch='executor', through a GuardCondition; ~0.3 ms later on 2 cores), or, for
    frames from a sender in this process, directly on the sender's thread when no call is running
    (dispatch='inline': the lowest latency in composed mode; send() returns after the callback, so the
    producer runs at the consumer's pace, newest frame first; frames from elsewhere, and from a sender whose
    thread may not wait (FrameSender.may_wait False: a live camera's capture thread), as 'thread').
    direct=False (or VIDACTION_DIRECT=off) makes it a plain DDS subscription with the same dispatch.
    counts: frames dispatched per path ('local', 'iox', 'dds'), 'duplicates', 'stale', 'overflow' (pending
    frames replaced by newer ones), 'errors' (callback raised, thread dispatch), 'iox_early' (DDS FrameRefs of
    an iceoryx2 camera that came before this subscription's reader was open: their samples went out before
    it; iox_state says where the reader is).
    trace=True keeps (path, stamp_ns, received_ns, taken_ns, dispatched_ns) of the last 10000 dispatches
    (benches; CLOCK_MONOTONIC ns: received by this subscription (iox: the event woke its thread), taken from
    the queue, callback called; stamp_ns is the FrameRef's header stamp).
    """

    def __init__(self, node, topic: str, callback, qos_profile, *, direct: bool = True,
                 dispatch: str = 'thread', callback_group=None, trace: bool = False):
        if dispatch not in DISPATCH:
            raise ValueError(f'unknown dispatch {dispatch!r}; choose one of {DISPATCH}')
        self.node = node
        self.callback = callback
        self.dispatch = dispatch
        self.closed = False
        self.counts = {'local': 0, 'dds': 0, 'iox': 0, 'duplicates': 0, 'stale': 0, 'overflow': 0,
                       'errors': 0, 'iox_early': 0}
        self._spare = FrameRef()                   # the next local frame is copied into it
        self.trace: collections.deque | None = collections.deque(maxlen=10000) if trace else None
        keep_last = qos_profile.history != HistoryPolicy.KEEP_ALL
        self.depth = max(1, int(qos_profile.depth)) if keep_last else 1000
        self._lock = threading.Lock()               # pending queue and duplicate bookkeeping
        self._dispatching = threading.Lock()        # callbacks one at a time
        self._dispatcher: int | None = None         # the thread running callbacks now
        self._pending: collections.deque = collections.deque()
        self._seen: collections.OrderedDict = collections.OrderedDict()   # (store, slot, generation) handed over
        self._last_sequence: collections.OrderedDict = collections.OrderedDict()  # store -> last dispatched
        self._stop = threading.Event()
        self._wakeup = threading.Event()
        self._context = node.context
        self.iox = None                              # the iceoryx2 reader, opened below
        self._direct = direct and direct_enabled()
        self._guard = (node.create_guard_condition(self._dispatch_pending, callback_group)
                       if dispatch == 'executor' else None)
        self.subscription = node.create_subscription(FrameRef, topic, self._on_dds, qos_profile,
                                                     callback_group=callback_group)
        self.topic = self.subscription.topic_name
        self._key = (id(self._context), self.topic)
        if self._direct:
            with _LOCAL_LOCK:
                _LOCAL.setdefault(self._key, []).append(weakref.ref(self))
                _LOCAL_VERSION[0] += 1
        self._thread = threading.Thread(target=self._run, name=f'frames:{self.topic}', daemon=True)
        self._thread.start()
        # iceoryx2 (a camera with transport iox): the thread opens a reader as soon as the camera has made its
        # service (polled: a file check, no iceoryx2 node before), so a pipeline on another transport holds
        # nothing of iceoryx2's; the sample is held until the callback returns (_iox_free).
        self._iox_free = threading.Event()
        self._iox_free.set()
        self._iox_wake = threading.Event()           # a DDS FrameRef of transport iox: look for the service now
        self._iox_thread = None
        self.iox_state = 'off'                       # off | waiting (for the service) | open | failed
        if self._direct:
            from . import iox_frames
            if iox_frames.available():
                self.iox_state = 'waiting'
                self._iox_name = iox_frames.service_name(self.topic, self._context.get_domain_id())
                self._iox_thread = threading.Thread(target=self._run_iox, name=f'iox:{self.topic}', daemon=True)
                self._iox_thread.start()

    # -- arrivals --------------------------------------------------------------------------------------------
    def _handed_over(self, key) -> None:
        """Remember a frame handed over in this process: its DDS copy, which follows, is a duplicate."""
        self._seen[key] = None
        if len(self._seen) > 512:
            self._seen.popitem(last=False)

    def _is_duplicate(self, key) -> bool:
        """Whether this DDS copy is of a frame handed over in this process (counted; forgotten once seen)."""
        if key is None or self._seen.pop(key, False) is not None:
            return False
        self.counts['duplicates'] += 1
        return True

    def _enqueue(self, msg, path: str, key, received_ns: int = 0) -> None:
        self._pending.append((msg, path, key, received_ns or time.monotonic_ns()))
        while len(self._pending) > self.depth:
            dropped = self._pending.popleft()
            self.counts['overflow'] += 1
            if dropped[1] == 'iox':
                self._release_iox(dropped[0])

    def _release_iox(self, msg) -> None:
        iox_refs.HELD.release(msg.store, msg.generation)
        self._iox_free.set()

    def _wake(self) -> None:
        if self.dispatch == 'executor':
            try:
                self._guard.trigger()
            except Exception:       # noqa: BLE001 - the node or context is going away
                pass
            return
        self._wakeup.set()

    def _deliver_local(self, msg: FrameRef, snapshot, may_wait: bool = True) -> None:
        """From a FrameSender in this process (its thread): queue a private copy, wake the dispatcher
        (dispatch='inline': run the callback right here when no callback is running and the sender may wait)."""
        if self.closed:
            return
        key = (msg.store, msg.slot, msg.generation)
        with self._lock:
            self._handed_over(key)
            # the private copy is made on the dispatching thread, from the snapshot (or msg when there is none)
            self._enqueue(_Local(msg, snapshot), 'local', key)
        if self.dispatch == 'inline' and may_wait and self._dispatch_pending(blocking=False):
            return
        self._wake()

    def _on_dds(self, msg: FrameRef) -> None:
        """Executor thread: the DDS copy. Dispatched unless it was handed over directly."""
        if self.closed:
            return
        if msg.transport in _IOX_TRANSPORTS and self.iox_state in ('open', 'waiting'):
            # open: iceoryx2 brought this frame already (or will: it was sent first). waiting: sent before
            # our reader existed; the reader opens now and takes the next ones.
            if self.iox_state == 'waiting':
                self.counts['iox_early'] += 1
                self._iox_wake.set()
            return
        key = (msg.store, msg.slot, msg.generation) if msg.store else None
        with self._lock:
            won = not self._is_duplicate(key)
            if won:
                self._enqueue(msg, 'dds', key)
        if won:
            if self.dispatch == 'executor':
                self._dispatch_pending()
            else:
                self._wake()

    # -- the thread: wake-ups --------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._wakeup.wait(0.5):
                if self._destroyed_as_unwanted():
                    return
                continue
            self._wakeup.clear()
            if self._stop.is_set():
                break
            if self.dispatch != 'executor':
                self._dispatch_pending()
            elif self._pending:
                self._wake()

    def _run_iox(self) -> None:
        if not self._open_iox_when_there():
            return
        try:
            self._iox_loop(self.iox)
        finally:
            if self.closed:
                self.iox.close()    # destroy() leaves it to this thread when its join timed out: never leaked

    def _open_iox_when_there(self) -> bool:
        """Wait for the camera's iceoryx2 service (a file check every IOX_POLL_S, at once when a DDS FrameRef of
        transport iox arrived), then open the reader. False when stopped first, or the reader cannot be
        opened (one warning; such frames then come over DDS and resolve like an observer's)."""
        from . import iox_frames
        while not self._stop.is_set():
            if iox_frames.service_exists(self._iox_name):
                try:
                    self.iox = iox_frames.IoxFrameReader(self._iox_name)
                except iox_frames.IoxUnavailable as err:
                    self.iox_state = 'failed'
                    _warn_once(self.node, 'iox-reader', f'iceoryx2 frame service unavailable ({err}); frames of a '
                                                        f'camera with transport iox arrive over DDS only')
                    return False
                if self._stop.is_set():
                    self.iox.close()
                    return False
                self.iox_state = 'open'
                return True
            self._iox_wake.wait(IOX_POLL_S)
            self._iox_wake.clear()
            if self._destroyed_as_unwanted():
                return False
        return False

    def _iox_loop(self, reader) -> None:
        spare = None
        while not self._stop.is_set():
            if spare is None:
                spare = FrameRef()                  # for the next frame, built while nothing is waiting
            try:
                woken = reader.wait(0.5)
            except Exception as err:    # noqa: BLE001 - the listener is gone (closing); say why otherwise
                if not self._stop.is_set():
                    _warn_once(self.node, 'iox-wait', f'iceoryx2 listener failed: {err!r}')
                return
            if self._stop.is_set():
                return
            if not woken:
                if self._destroyed_as_unwanted():
                    return
                continue
            woken_ns = time.monotonic_ns()
            self._iox_free.wait()               # the previous frame's callback has returned
            if self._stop.is_set():
                return
            frame = reader.take_newest()        # newest wins; the ones it replaced are counted as dropped
            if frame is None:
                continue
            iox_refs.HELD.hold(reader.name, frame)
            msg = iox_refs.frame_ref(frame, reader.name, spare)
            spare = None
            with self._lock:
                self._iox_free.clear()
                self._enqueue(msg, 'iox', (reader.name, 0, frame.sequence), received_ns=woken_ns)
            if self.dispatch == 'executor':
                self._wake()
            else:
                self._dispatch_pending()

    def _destroyed_as_unwanted(self) -> bool:
        """After an idle wait in one of this subscription's threads: destroy it when its node dropped it or the
        context ended (nobody called destroy()); True then, and the thread ends."""
        if self._still_wanted():
            return False
        self.destroy()
        return True

    def _still_wanted(self) -> bool:
        try:
            return self._context.ok() and any(sub is self.subscription for sub in self.node.subscriptions)
        except Exception:           # noqa: BLE001 - node destroyed
            return False

    # -- dispatch ---------------------------------------------------------------------------------------------
    def _dispatch_pending(self, blocking: bool = True) -> bool:
        """Run the callback for each pending frame, one call at a time; False when another call is running
        and blocking is False, or when called from inside the callback (the running loop takes them)."""
        me = threading.get_ident()
        if self._dispatcher == me or not self._dispatching.acquire(blocking):
            return False
        self._dispatcher = me
        try:
            self._dispatch_locked()
        finally:
            self._dispatcher = None
            if self._spare is None:
                self._spare = FrameRef()                         # built now, off the next frame's hot path
            self._dispatching.release()
        return True

    def _dispatch_locked(self) -> None:
        while not self.closed:
            with self._lock:
                if not self._pending:
                    return
                msg, path, key, received_ns = self._pending.popleft()
            taken_ns = time.monotonic_ns()
            if isinstance(msg, _Local):                      # handed over in this process: a private copy
                spare, self._spare = self._spare, None
                msg = _COPIER.copy(msg.msg, msg.snapshot, spare)
            if msg.store:
                last = self._last_sequence.get(msg.store)
                if last is not None and msg.sequence < last:
                    self.counts['stale'] += 1                # a newer frame of this camera went first
                    if path == 'iox':
                        self._release_iox(msg)
                    continue
                self._last_sequence[msg.store] = msg.sequence
                self._last_sequence.move_to_end(msg.store)
                if len(self._last_sequence) > 32:
                    self._last_sequence.popitem(last=False)
            self.counts[path] += 1
            if self.trace is not None:
                stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
                self.trace.append((path, stamp_ns, received_ns, taken_ns, time.monotonic_ns()))
            if self.dispatch == 'executor':
                try:
                    self.callback(msg)                       # exceptions propagate, as rclpy callbacks do
                finally:
                    if path == 'iox':
                        self._release_iox(msg)
                    # One frame per executor turn: a consumer slower than the frame rate would otherwise
                    # never return to the executor, starving its node's timers and services (diagnostics,
                    # lifecycle). More waiting: trigger again, queued behind whatever else is ready now.
                    with self._lock:
                        more = bool(self._pending)
                    if more:
                        self._wake()
                return
            try:
                self.callback(msg)
            except Exception as err:                         # noqa: BLE001 - keep the thread serving
                self.counts['errors'] += 1
                self.node.get_logger().error(f'frame callback raised: {err!r}', throttle_duration_sec=5.0)
            finally:
                if path == 'iox':
                    self._release_iox(msg)

    # -- teardown ---------------------------------------------------------------------------------------------
    def stats(self) -> dict:
        out = dict(self.counts)
        if self.iox is not None:
            out.update({f'iox_{k}': v for k, v in self.iox.counts.items()})
        return out

    def destroy(self) -> None:
        """Stop the threads, release held frames and the iceoryx2 reader, destroy the DDS subscription. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self._stop.set()
        with _LOCAL_LOCK:
            refs = _LOCAL.get(self._key)
            if refs is not None:
                refs[:] = [ref for ref in refs if ref() not in (None, self)]
                if not refs:
                    del _LOCAL[self._key]
            _LOCAL_VERSION[0] += 1
        self._wakeup.set()
        self._iox_free.set()
        self._iox_wake.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(5.0)
        if self._iox_thread is not None and threading.current_thread() is not self._iox_thread:
            self._iox_thread.join(5.0)
        if self._dispatcher != threading.get_ident() and self._dispatching.acquire(timeout=5.0):
            self._dispatching.release()                          # a callback in progress has finished
        with self._lock:
            held, self._pending = [item[0] for item in self._pending if item[1] == 'iox'], collections.deque()
        for msg in held:
            self._release_iox(msg)
        if self.iox is not None and (self._iox_thread is None or not self._iox_thread.is_alive()
                                     or threading.current_thread() is self._iox_thread):
            self.iox.close()
        try:
            if self._guard is not None:
                self.node.destroy_guard_condition(self._guard)
            self.node.destroy_subscription(self.subscription)
        except Exception:           # noqa: BLE001 - node or context already gone
            pass
