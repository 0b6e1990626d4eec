"""Composed mode: the embedder side receives the very buffer the camera side filled (zero pixel copies),
through a real FrameRef over real DDS in one process; with a FrameSubscription, handed over directly (the DDS
copy is dropped as a duplicate); loans filled in place, and abandoned."""
import threading
import time

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from vidaction_ros import qos
from vidaction_ros.msg import FrameRef
from vidaction_ros.transport.frame_transport import FrameSender, resolve

from ros_helpers import wait_until

pytestmark = pytest.mark.integration


@pytest.mark.parametrize('mode', ['inproc', 'image'])
def test_frame_reaches_the_consumer(mode):
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        producer = Node('test_producer', context=context)
        consumer = Node('test_consumer', context=context)
        received, arrived = [], threading.Event()

        def on_frame(msg):
            received.append((msg, resolve(msg)))
            arrived.set()
        consumer.create_subscription(FrameRef, 'camera/frame', on_frame, qos.FRAME_LOCKSTEP)
        sender = FrameSender(producer, mode, lockstep=True)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(consumer)
        threading.Thread(target=executor.spin, daemon=True).start()
        wait_until(lambda: sender.publisher.get_subscription_count() > 0, 30,   # discovery: the match
                   'the sender never matched the subscription')
        image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
        msg = FrameRef()
        msg.sequence = 7
        sender.send(msg, image)
        assert arrived.wait(10)
        ref, frame = received[0]
        assert ref.sequence == 7 and ref.transport == mode
        assert np.array_equal(frame, image)
        if mode == 'inproc':
            assert frame is image                                  # the same object: no pixel copy
            assert len(ref.image.data) == 0                        # and no pixels on the wire
        else:
            assert frame is not image and len(ref.image.data) == image.nbytes
        executor.shutdown()
        producer.destroy_node()
        consumer.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


# -- FrameSubscription: the frame handed over in-process, the DDS copy dropped --------------------------------
class Composed:
    """A producer node and a consumer node in one context, the consumer spinning on its own thread."""

    def __init__(self, mode: str, dispatch: str = 'thread', direct: bool = True):
        from vidaction_ros.transport.frame_transport import FrameSubscription
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.producer = Node('test_producer', context=self.context)
        self.consumer = Node('test_consumer', context=self.context)
        self.received, self.changed = [], threading.Condition()
        self.observed = []
        self.frames = FrameSubscription(self.consumer, 'camera/frame', self._on_frame, qos.FRAME_LOCKSTEP,
                                        dispatch=dispatch, direct=direct)
        self.consumer.create_subscription(FrameRef, 'camera/frame', self._on_observed, qos.FRAME_LOCKSTEP)
        self.sender = FrameSender(self.producer, mode, lockstep=True, max_frame=(64, 48), direct=direct)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.consumer)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()
        wait_until(lambda: self.sender.publisher.get_subscription_count() >= 2, 30,   # discovery: both matches
                   lambda: f'the sender matched {self.sender.publisher.get_subscription_count()} of 2 subscriptions')
        if mode == 'iox' and self.frames._direct:       # the reader opens once the camera made its service
            wait_until(lambda: self.sender.iox.subscribers() >= 1, 30,
                       lambda: f'iceoryx2 reader still {self.frames.iox_state} after 30 s')

    def _on_frame(self, msg):
        with self.changed:
            self.received.append((msg, resolve(msg), threading.current_thread()))
            self.changed.notify_all()

    def _on_observed(self, msg):
        with self.changed:
            self.observed.append(msg.sequence)
            self.changed.notify_all()

    def wait(self, predicate, timeout: float = 30.0) -> bool:
        with self.changed:
            return self.changed.wait_for(predicate, timeout)

    def close(self):
        self.frames.destroy()
        self.sender.close()
        self.executor.shutdown()
        # Destroyed, not just shut down: a participant left behind would keep matching 'camera/frame' in later
        # tests of this process (other processes count its subscriptions as theirs).
        self.producer.destroy_node()
        self.consumer.destroy_node()
        rclpy.try_shutdown(context=self.context)


def image_of(seq: int) -> np.ndarray:
    return np.random.default_rng(seq).integers(0, 255, (48, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize('dispatch', ['thread', 'executor', 'inline'])
@pytest.mark.parametrize('mode', ['inproc', 'iox'])
def test_frame_subscription_gets_each_frame_once_handed_over_directly(mode, dispatch):
    import cv2
    run = Composed(mode, dispatch)
    try:
        sent = []
        for seq in range(6):
            msg = FrameRef()
            msg.sequence = seq
            if seq % 2:                                          # loaned: filled in place
                view = run.sender.loan(48, 64)
                assert cv2.resize(np.repeat(np.repeat(image_of(seq), 2, 0), 2, 1), (64, 48), dst=view,
                                  interpolation=cv2.INTER_NEAREST) is view
                run.sender.send_loaned(msg, view)
                sent.append(view)
            else:
                sent.append(image_of(seq))
                run.sender.send(msg, sent[-1])
            if mode == 'iox':       # iceoryx2 keeps the newest frame only (counted drops): one at a time
                assert run.wait(lambda: len(run.received) > seq), f'frame {seq}: {run.frames.stats()}'
        assert run.wait(lambda: len(run.received) >= 6 and len(run.observed) >= 6)
        assert [m.sequence for m, _, _ in run.received] == list(range(6))            # each once, in order
        for (msg, frame, _), image in zip(run.received, sent):
            assert np.array_equal(frame, image_of(msg.sequence))
            if mode == 'inproc':
                assert frame is image                                              # by reference, still
        assert sorted(run.observed) == list(range(6))                             # DDS carried them all too
        counts = run.frames.counts
        if mode == 'iox':                                 # woken by iceoryx2; DDS copies never dispatched
            assert counts['iox'] == 6 and counts['dds'] == 0 and counts['local'] == 0, counts
        else:
            assert counts['local'] == 6 and counts['dds'] == 0 and counts['iox'] == 0   # handed over first
            wait_until(lambda: counts['duplicates'] >= 6, 30, lambda: f'DDS copies not all seen in 30 s: {counts}')
            assert counts['duplicates'] == 6                                       # DDS copies dropped
        assert len(run.received) == 6
        threads = {thread for _, _, thread in run.received}
        if dispatch == 'executor':
            assert threads == {run.spinner}                                         # in the node's executor
        elif dispatch == 'inline' and mode == 'inproc':
            assert threads == {threading.current_thread()}                          # the sender's own thread
        else:
            assert len(threads) == 1 and run.spinner not in threads                # the subscription's thread
            assert threading.current_thread() not in threads
        assert run.received[0][0] is not run.received[1][0]                        # private messages
    finally:
        run.close()


def test_inline_subscribers_never_run_on_a_sender_that_may_not_wait():
    """A live camera's capture thread sends with may_wait False: an inline subscription takes those frames on
    its own thread (the sender returns without waiting for the callback), in order, each once."""
    run = Composed('inproc', 'inline')
    try:
        run.sender.may_wait = False
        release, stuck = threading.Event(), []
        callback = run.frames.callback

        def slow(msg):
            # Busy until the sender has sent all three: run on the sender's thread, this would wait it out.
            if not release.wait(30):
                stuck.append(msg.sequence)
            callback(msg)
        run.frames.callback = slow
        for seq in range(3):
            msg = FrameRef()
            msg.sequence = seq
            run.sender.send(msg, image_of(seq))      # returns at once although the callback cannot finish
        release.set()
        assert run.wait(lambda: len(run.received) >= 1)
        sequences = [m.sequence for m, _, _ in run.received]
        assert sequences == sorted(set(sequences)) and sequences[0] == 0        # in order, each once
        threads = {thread for _, _, thread in run.received}
        assert threading.current_thread() not in threads and run.spinner not in threads
        assert not stuck
    finally:
        run.close()


def test_executor_dispatch_gives_the_executor_back_between_frames():
    """A consumer slower than its frames (50 ms a callback, a frame every 10 ms) still lets its node's timers
    run (diagnostics, lifecycle services): one frame per executor turn, not a loop until the queue is empty,
    which under overload never happens. From first principles: a 20 Hz timer ticks ~20 times in the 1 s of
    frames when it gets a turn between callbacks, 0 times when it does not."""
    run = Composed('inproc', 'executor')
    ticks = []
    run.consumer.create_timer(0.05, lambda: ticks.append(time.monotonic()))

    def slow_consumer(msg):
        time.sleep(0.05)                  # the load under test (a 50 ms callback), not a wait for readiness
        with run.changed:                 # the FrameRef only: its slot may well be reused by now
            run.received.append((msg, None, threading.current_thread()))
            run.changed.notify_all()
    run.frames.callback = slow_consumer
    try:
        start = time.monotonic()
        for seq in range(100):
            msg = FrameRef()
            msg.sequence = seq
            run.sender.send(msg, image_of(seq % 5))
            time.sleep(0.01)              # pacing, not readiness: a camera's 100 Hz, faster than the consumer
        end = time.monotonic()
        assert len([t for t in ticks if start <= t <= end]) >= 3, ticks
        assert run.wait(lambda: len(run.received) >= 10)
        sequences = [m.sequence for m, _, _ in run.received]
        assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)   # in order, once each
        assert run.frames.counts['overflow'] > 0                  # the rest replaced by newer ones, counted
    finally:
        run.close()


@pytest.mark.parametrize('mode', ['inproc', 'iox', 'image'])
def test_a_loan_abandoned_by_an_exception_publishes_nothing(mode):
    run = Composed(mode)
    try:
        with pytest.raises(RuntimeError, match='mid-frame'):
            with run.sender.loaned(FrameRef(), 48, 64) as view:
                assert run.sender.loaned_view is view
                view[:10] = 0
                raise RuntimeError('mid-frame')
        assert not view.flags.writeable and run.sender.loaned_view is None          # handed back
        with pytest.raises(ValueError, match='not the outstanding loan'):
            run.sender.send_loaned(FrameRef(), view)
        msg = FrameRef()
        msg.sequence = 1
        with run.sender.loaned(msg, 48, 64) as view:
            view[:] = image_of(1)
        # Until frame 1 is in and every copy of it is accounted for (handed over in-process and its DDS copy
        # dropped; DDS only for 'image'). Each path delivers in order, so anything the abandoned loan had
        # published would have come before frame 1 on it: no settling time needed.
        assert run.wait(lambda: any(m.sequence == 1 for m, _, _ in run.received) and 1 in run.observed)
        copies = 2 if run.sender.counts['local'] else 1
        wait_until(lambda: sum(run.frames.counts[k] for k in ('local', 'iox', 'dds', 'duplicates')) >= copies,
                   30, lambda: f'not every copy of frame 1 seen in 30 s: {run.frames.counts}')
        assert [m.sequence for m, _, _ in run.received] == [1] and run.observed == [1]
        assert np.array_equal(run.received[0][1], image_of(1))
        assert run.sender.stats()['abandoned'] == 1 and run.sender.stats()['sent'] == 1
        if mode == 'iox':
            assert msg.generation == 1 and run.sender.stats()['iox_abandoned'] == 1  # the sample went back
        with pytest.raises(ValueError, match='not the outstanding loan'):
            run.sender.send_loaned(FrameRef(), np.zeros((48, 64, 3), np.uint8))    # an array of one's own
    finally:
        run.close()


def test_direct_delivery_off_is_plain_dds(monkeypatch):
    monkeypatch.setenv('VIDACTION_DIRECT', 'off')
    run = Composed('inproc')
    try:
        assert not run.sender.direct and run.frames.iox_state == 'off'
        for seq in range(3):
            msg = FrameRef()
            msg.sequence = seq
            run.sender.send(msg, image_of(seq))
        assert run.wait(lambda: len(run.received) >= 3)
        assert [m.sequence for m, _, _ in run.received] == [0, 1, 2]
        assert run.frames.counts['dds'] == 3 and run.frames.counts['local'] == 0
    finally:
        run.close()


def test_a_private_copy_of_a_frame_ref_equals_the_dds_copy():
    """In-process subscribers get their own FrameRef through the copier (cheaper than a CDR round trip); it
    equals what DDS delivers, also into a message built ahead of time; pixels inline go through CDR."""
    from rclpy.serialization import deserialize_message, serialize_message

    from vidaction_ros.transport.local_frames import COPIER as _COPIER
    msg = FrameRef()
    msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id = 1_700_000_000, 999_999_999, 'cam'
    msg.sequence, msg.transport, msg.store, msg.slot, msg.generation = 2**63 + 5, 'inproc', 'cam#1#0', 3, 99
    msg.width, msg.height, msg.encoding, msg.source_width, msg.source_height = 1920, 1080, 'bgr8', 3840, 2160
    msg.scene_change, msg.keyframe = 0.5, True                              # exact in float32, as DDS sends it
    msg.times.captured.sec, msg.times.published.nanosec = 5, 7
    dds = deserialize_message(serialize_message(msg), FrameRef)             # what a DDS subscriber gets
    snapshot = _COPIER.snapshot(msg)
    assert _COPIER.copy(msg) == dds and _COPIER.copy(msg, snapshot, FrameRef()) == dds
    assert _COPIER.copy(msg) is not msg
    msg.sequence = 1
    assert _COPIER.copy(msg, snapshot) == dds                                 # as it was when snapshotted
    inline = FrameRef()
    inline.image.data = b'pixels'                                             # transport "image": CDR
    assert _COPIER.snapshot(inline) is None and _COPIER.copy(inline) == inline


def test_a_consumer_of_an_image_camera_holds_nothing_of_iceoryx2():
    # Its reader waits for a camera's iceoryx2 service, which an image (or inproc) camera never makes: no
    # iceoryx2 node, no subscriber slot taken, however many consumers come and go.
    from vidaction_ros.transport import iox_frames
    if not iox_frames.available():
        pytest.skip('iceoryx2 is not installed')
    run = Composed('image')
    try:
        service = iox_frames.service_name(run.frames.topic, run.context.get_domain_id())
        for seq in range(3):
            msg = FrameRef()
            msg.sequence = seq
            run.sender.send(msg, image_of(seq))
        assert run.wait(lambda: len(run.received) >= 3)
        assert run.frames.counts['dds'] == 3 and run.frames.iox_state == 'waiting' and run.frames.iox is None
        assert not iox_frames.service_exists(service)
    finally:
        run.close()
