"""The consumers' side of the frame transport (see frame_transport): FrameSubscription hears of each frame
by the fastest way there is (handed over in this process, an iceoryx2 reader, else DDS), once, in order,
and runs the callback on its own thread, the node's executor, or the sender's thread."""
from __future__ import annotations

import collections
import threading
import time

from rclpy.qos import HistoryPolicy

from ..msg import FrameRef
from . import iox_refs, local_frames
from .local_frames import COPIER, LocalFrame, direct_enabled
from .log_once import warn_once

DISPATCH = ('thread', 'executor', 'inline')
_IOX_TRANSPORTS = (FrameRef.TRANSPORT_IOX, FrameRef.TRANSPORT_CUDA)   # frames iceoryx2 delivers
IOX_POLL_S = 0.2      # a consumer looks for its camera's iceoryx2 service this often until it is there


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
            local_frames.register(self._key, self)
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
            self._enqueue(LocalFrame(msg, snapshot), 'local', key)
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
                    warn_once(self.node, 'iox-reader', f'iceoryx2 frame service unavailable ({err}); frames of a '
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
                    warn_once(self.node, 'iox-wait', f'iceoryx2 listener failed: {err!r}')
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
            if isinstance(msg, LocalFrame):                      # handed over in this process: a private copy
                spare, self._spare = self._spare, None
                msg = COPIER.copy(msg.msg, msg.snapshot, spare)
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
        local_frames.unregister(self._key, self)
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
