"""The camera's side of the frame transport (see frame_transport): FrameSender publishes FrameRefs and puts
the pixels where the mode keeps them, lends producers the transport's own buffer (loan / send_loaned /
abandon), hands frames to this process's FrameSubscriptions directly and publishes the DDS copy after."""
from __future__ import annotations

import collections
import itertools
import os
import threading
import time
from contextlib import contextmanager

import numpy as np
from sensor_msgs.msg import Image

from .. import qos
from ..conversions import bgr_to_image
from ..msg import FrameRef
from . import iox_refs, local_frames
from .frame_access import MODES, host_array
from .frame_store import open_store
from .local_frames import COPIER, direct_enabled
from .log_once import warn_once

DEFAULT_MAX_FRAME = (1920, 1080)   # (width, height) of the largest frame when the caller does not say
DDS_DELAY_S = 0.002   # DDS copy of a frame handed over directly: this much later (see FrameSender)
_store_ids = itertools.count()


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
            snapshot = COPIER.snapshot(msg)
        elif self.direct and self.mode == 'inproc':
            if self._local_version != local_frames.version():
                self._local_version = local_frames.version()
                self._local = local_frames.local_subscribers(self._context, self._topic)
            if self._local:
                snapshot = COPIER.snapshot(msg)
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
                self.publisher.publish(COPIER.copy(msg, snapshot) if snapshot is not None else msg)
            except Exception as err:     # noqa: BLE001 - publisher destroyed or context shut down under us
                warn_once(self.node, 'deferred-publish', f'deferred FrameRef publish failed: {err!r}')

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
