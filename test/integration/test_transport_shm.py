"""Multi-process mode: a FrameSender(mode='shm') in a child process publishes FrameRefs over real DDS; this
process subscribes, resolves the pixels from the shared-memory ring and checks them exactly. Then the
producer's exit (clean, and SIGKILL) and what a consumer sees afterwards. Then the loaned + doorbell path:
the producer fills loaned slots in place, a FrameSubscription here is rung over the ring's Unix socket (the
FrameRef still goes over DDS, for observers and as the fallback), a consumer process that dies does not hold
the producer up, and without a doorbell everything still arrives over DDS."""
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading

import numpy as np
import pytest
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from vidaction_ros import qos
from vidaction_ros.transport.frame_store import FrameLost
from vidaction_ros.msg import FrameRef
from vidaction_ros.transport.shm_ring import SHM_DIR, segment_path
from vidaction_ros.transport.frame_transport import MODES, FrameSender, FrameSubscription, borrow, resolve

from ros_helpers import wait_until

pytestmark = pytest.mark.integration
FRAMES = 12

# The camera side: a real node with a real FrameSender in its own process. It publishes FRAMES frames whose
# pixels the test can recompute (seeded by sequence), then waits for 'exit' (clean close) or a SIGKILL.
PRODUCER = r'''
import json
import select
import sys
import time
import numpy as np
import rclpy
from rclpy.node import Node
from vidaction_ros.msg import FrameRef
from vidaction_ros.transport.frame_transport import FrameSender
frames = int(sys.argv[1])
rclpy.init()
node = Node('shm_test_camera')
sender = FrameSender(node, 'shm', lockstep=True, slots=frames + 4, max_frame=(640, 480))
print('ring', sender.ring.name, flush=True)
WAIT_S = 45.0                                 # under the 60 s the test waits for each answer


def readers_registered(wanted, timeout=WAIT_S):
    """Until `wanted` doorbell readers registered: woken by each registration datagram on the doorbell
    socket (select), never by a timer; False at the deadline."""
    deadline = time.monotonic() + timeout
    while not sender.bell.poll_registrations() or len(sender.bell.readers) < wanted:   # drains them
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        select.select([sender.bell.sock], [], [], left)
    return True


def subscriptions_matched(wanted, timeout=WAIT_S):
    """Until our writer matched `wanted` subscriptions (the graph has no event we can wait on here: look
    every 10 ms); False at the deadline."""
    deadline = time.monotonic() + timeout
    while sender.publisher.get_subscription_count() < wanted:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


for line in sys.stdin:                        # 'go' once the test's subscriber matched, then 'exit'
    words = line.split()
    if words and words[0] == 'loan':          # loan N START: wait for N doorbell readers, send loaned frames
        readers, start = int(words[1]), int(words[2])
        if sender.bell is not None and readers and not readers_registered(readers):
            print('error', f'only {len(sender.bell.readers)} of {readers} doorbell readers registered in '
                  f'{WAIT_S} s', flush=True)
            continue
        for seq in range(start, start + frames):
            if seq == start + frames // 2:    # a loan abandoned mid-fill: nothing published, ring consistent
                try:
                    with sender.loaned(FrameRef(), 480, 640) as view:
                        view[:100] = 0
                        raise RuntimeError('producer failed mid-frame')
                except RuntimeError:
                    pass
            msg = FrameRef()
            msg.sequence = seq
            view = sender.loan(480, 640)      # the ring slot itself
            view[:] = np.random.default_rng(seq).integers(0, 256, (480, 640, 3), dtype=np.uint8)
            sender.send_loaned(msg, view)
            time.sleep(0.02)                  # pacing, not readiness: a camera's 50 Hz, as below
        print('loaned', json.dumps(sender.stats()), flush=True)
    elif words and words[0] == 'go':          # go [N]: once N (default 1) subscriptions matched
        wanted = int(words[1]) if len(words) > 1 else 1
        if not subscriptions_matched(wanted):
            print('error', f'our writer matched {sender.publisher.get_subscription_count()} of {wanted} '
                  f'subscriptions in {WAIT_S} s', flush=True)
            continue
        for seq in range(frames):
            image = np.random.default_rng(seq).integers(0, 256, (480, 640, 3), dtype=np.uint8)
            msg = FrameRef()
            msg.sequence = seq
            sender.send(msg, image)
            # Pacing, not readiness: a camera's 50 Hz, not a burst past the reliable keep-last depth of 10.
            time.sleep(0.02)
        print('sent', flush=True)
    elif line.strip() == 'exit':
        break
sender.close()
node.destroy_node()
rclpy.shutdown()
print('closed', flush=True)
'''


def expected(seq: int) -> np.ndarray:
    return np.random.default_rng(seq).integers(0, 256, (480, 640, 3), dtype=np.uint8)


class Producer:
    def __init__(self, **env):
        self.proc = subprocess.Popen([sys.executable, '-c', PRODUCER, str(FRAMES)], cwd=tempfile.gettempdir(),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, **env})
        self.lines = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line.strip().split(maxsplit=1))

    def expect(self, word: str, timeout: float = 60.0) -> list[str]:
        try:
            got = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f'producer did not say {word!r} within {timeout} s') from None
        assert got and got[0] == word, got
        return got

    def say(self, line: str):
        self.proc.stdin.write(line + '\n')
        self.proc.stdin.flush()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(60)


class Consumer:
    """A subscriber node resolving every FrameRef the moment it arrives, as the embedder does. bell=True:
    through a FrameSubscription (doorbell + DDS), plus a plain DDS observer of the same topic."""

    def __init__(self, context, bell: bool = False):
        self.node = Node('test_shm_consumer', context=context)
        self.results, self.changed = [], threading.Condition()
        self.observed = []
        if bell:
            self.frames = FrameSubscription(self.node, 'camera/frame', self._on_frame, qos.FRAME_LOCKSTEP,
                                            trace=True)
            self.node.create_subscription(FrameRef, 'camera/frame', self._on_observed, qos.FRAME_LOCKSTEP)
        else:
            self.frames = None
            self.node.create_subscription(FrameRef, 'camera/frame', self._on_frame, qos.FRAME_LOCKSTEP)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def _on_frame(self, msg):
        try:
            outcome = resolve(msg)
        except FrameLost as err:
            outcome = err
        with self.changed:
            self.results.append((msg, outcome))
            self.changed.notify_all()

    def _on_observed(self, msg):
        with self.changed:
            self.observed.append(msg.sequence)
            self.changed.notify_all()

    def wait_observed(self, sequences, timeout: float = 60.0) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: set(sequences) <= set(self.observed), timeout)

    def close(self):
        """Destroyed, not just shut down: a participant left behind would keep matching 'camera/frame' in
        later tests of this process (and a producer would count its subscription as a consumer)."""
        if self.frames is not None:
            self.frames.destroy()
        self.executor.shutdown()
        self.node.destroy_node()

    def wait_for(self, count: int, timeout: float = 60.0) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.results) >= count, timeout)

    def wait_for_publisher(self, timeout: float = 60.0) -> None:
        """Discovery: until the producer's writer is in this node's graph (AssertionError after timeout)."""
        wait_until(lambda: self.node.count_publishers('camera/frame') > 0, timeout,
                   'the producer never appeared on camera/frame')


def close_cleanly(producer, consumer) -> None:
    """The producer closes its ring on request and exits 0; then the consumer goes."""
    producer.say('exit')
    producer.expect('closed')
    assert producer.proc.wait(60) == 0
    consumer.close()


def test_shm_is_a_transport_mode():
    assert 'shm' in MODES and FrameRef.TRANSPORT_SHM == 'shm'


def test_frames_cross_processes_through_shared_memory_exactly(context):
    producer = Producer()
    try:
        ring = producer.expect('ring')[1]
        assert ring.startswith('vidaction_shm_test_camera_')
        assert os.path.exists(segment_path(ring))
        consumer = Consumer(context)
        consumer.wait_for_publisher()
        producer.say('go')
        producer.expect('sent')
        assert consumer.wait_for(FRAMES), f'only {[m.sequence for m, _ in consumer.results]} of {FRAMES} arrived'
        for msg, frame in consumer.results:
            assert msg.transport == 'shm' and msg.store == ring and msg.encoding == 'bgr8'
            assert (msg.width, msg.height) == (640, 480)
            assert len(msg.image.data) == 0                              # no pixels on the wire
            assert isinstance(frame, np.ndarray), f'frame {msg.sequence} lost: {frame}'
            assert np.array_equal(frame, expected(msg.sequence)), f'frame {msg.sequence} differs'
        assert sorted(m.sequence for m, _ in consumer.results) == list(range(FRAMES))
        for msg, _ in consumer.results:                                  # zero-copy reads agree
            with borrow(msg) as view:
                assert not view.flags.writeable and np.array_equal(view, expected(msg.sequence))

        producer.say('exit')
        producer.expect('closed')
        assert producer.proc.wait(60) == 0
        assert not os.path.exists(segment_path(ring))                  # the camera cleaned up
        with pytest.raises(FrameLost):
            resolve(consumer.results[-1][0])                            # its frames are gone, clearly
        consumer.close()
    finally:
        producer.close()


def test_a_sigkilled_camera_leaves_nothing_that_breaks_the_next_start(context):
    producer = Producer()
    try:
        ring = producer.expect('ring')[1]
        consumer = Consumer(context)
        consumer.wait_for_publisher()
        producer.say('go')
        producer.expect('sent')
        assert consumer.wait_for(FRAMES), f'only {[m.sequence for m, _ in consumer.results]} of {FRAMES} arrived'
        producer.proc.kill()                                           # SIGKILL: no close, no unlink
        producer.proc.wait(60)
        assert os.path.exists(segment_path(ring))
        msg = consumer.results[-1][0]
        with pytest.raises(FrameLost, match='is dead'):
            resolve(msg)                                               # never the dead camera's pixels

        # The next camera of that name (another pid, so another ring) sweeps the dead one and works.
        node = Node('shm_test_camera', context=context)
        sender = FrameSender(node, 'shm', max_frame=(64, 48))
        try:
            assert not os.path.exists(segment_path(ring))
            assert sender.ring.name != ring
            image = np.random.default_rng(99).integers(0, 256, (48, 64, 3), dtype=np.uint8)
            ref = sender.send(FrameRef(), image)
            assert np.array_equal(resolve(ref), image)
        finally:
            sender.close()
            node.destroy_node()
        assert not any(sender.ring.name in entry for entry in os.listdir(SHM_DIR))
        consumer.close()
    finally:
        producer.close()


# A second consumer in its own process: a real node with a FrameSubscription, killed by the test.
CONSUMER = r'''
import sys
import threading
import time
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from vidaction_ros import qos
from vidaction_ros.transport.frame_transport import FrameSubscription, resolve
rclpy.init()
node = Node('shm_test_other_consumer')
FrameSubscription(node, 'camera/frame', lambda msg: print('got', msg.sequence, resolve(msg).shape, flush=True),
                  qos.FRAME_LOCKSTEP)
executor = SingleThreadedExecutor()
executor.add_node(node)
threading.Thread(target=executor.spin, daemon=True).start()
deadline = time.monotonic() + 60             # until the camera's publisher is in our graph (no graph event to
while node.count_publishers('camera/frame') == 0:   # wait on here: look every 10 ms), bounded
    if time.monotonic() >= deadline:
        print('error: the camera never appeared on camera/frame in 60 s', flush=True)
        sys.exit(1)
    time.sleep(0.01)
print('ready', flush=True)
sys.stdin.read()                              # until the test closes our stdin, or is gone
'''


def check_frames(results, sequences):
    """Each frame once, in order, pixels exact."""
    assert [msg.sequence for msg, _ in results] == list(sequences)
    for msg, frame in results:
        assert isinstance(frame, np.ndarray), f'frame {msg.sequence} lost: {frame}'
        assert np.array_equal(frame, expected(msg.sequence)), f'frame {msg.sequence} differs'


def test_loaned_frames_ring_the_doorbell_and_a_dead_consumer_holds_nothing_up(context):
    producer = Producer()
    other = None
    try:
        producer.expect('ring')
        consumer = Consumer(context, bell=True)
        consumer.wait_for_publisher()
        other = subprocess.Popen([sys.executable, '-c', CONSUMER], cwd=tempfile.gettempdir(), stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, env=dict(os.environ))
        assert other.stdout.readline().strip() == 'ready'
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line.split()) for line in other.stdout], daemon=True).start()
        # 1. copying sends: the first FrameRef of a ring comes over DDS, and that is when readers register.
        producer.say('go 3')                    # once it matched our two subscriptions and the other process's
        producer.expect('sent')
        assert consumer.wait_for(FRAMES), f'only {len(consumer.results)} of {FRAMES} frames arrived'
        check_frames(consumer.results, range(FRAMES))
        assert consumer.frames.counts['registrations'] >= 1
        # The other process got frames too (not necessarily all 12: a reliable keep-last-10 writer may drop
        # the first ones for a reader whose side of the match was not complete yet); its first FrameRef from
        # DDS made it register with the ring's doorbell.
        try:
            words = lines.get(timeout=60)
        except queue.Empty:
            raise AssertionError('the other consumer got no frame') from None
        assert words[0] == 'got' and words[2:] == ['(480,', '640,', '3)'], words

        # 2. the other consumer dies (SIGKILL: no unregistering); loaned frames: both doorbell readers were
        # registered, the dead one is dropped without holding the producer up, this one gets every frame.
        other.kill()
        other.wait(60)
        producer.say(f'loan 2 {FRAMES}')
        stats = json.loads(producer.expect('loaned')[1])
        assert consumer.wait_for(2 * FRAMES), (f'only {[m.sequence for m, _ in consumer.results]} arrived; '
                                               f'{consumer.frames.stats()} {stats}')
        check_frames(consumer.results, range(2 * FRAMES))
        assert stats['abandoned'] == 1 and stats['loaned'] == FRAMES + 1
        assert stats['doorbell_unregistered'] == 1 and stats['doorbell_dropped'] >= 1   # the dead reader
        assert stats['doorbell_sent'] >= 1 and stats['doorbell_readers'] == 1
        counts = consumer.frames.counts
        assert counts['bell'] >= 1                                     # rung over the socket, not DDS
        assert counts['bell'] + counts['dds'] == 2 * FRAMES and counts['stale'] == 0
        bell_frames = [path for path, *_ in consumer.frames.trace if path == 'bell']
        assert len(bell_frames) == counts['bell']
        # The FrameRefs still went over DDS: an observer sees the loaned ones (the first of the copying batch
        # may reach it before its side of the match completed), and the subscription dropped the DDS copies of
        # the frames the doorbell delivered first (and the doorbell copies of any frame whose DDS copy won),
        # never dispatching a frame twice.
        assert consumer.wait_observed(range(FRAMES, 2 * FRAMES)), f'the observer got {sorted(consumer.observed)}'
        # Each loaned frame reached this subscription both ways (discovery is long complete by then), so its
        # second copy was dropped: at least FRAMES duplicates, and no frame dispatched twice.
        wait_until(lambda: counts['duplicates'] >= FRAMES, 30,
                   lambda: f'only {counts["duplicates"]} duplicates dropped in 30 s: {counts}')
        assert FRAMES <= counts['duplicates'] <= 2 * FRAMES
        assert len(consumer.results) == 2 * FRAMES

        close_cleanly(producer, consumer)
    finally:
        if other is not None and other.poll() is None:
            other.kill()
            other.wait(60)
        producer.close()


def test_without_a_doorbell_everything_still_arrives_over_dds(context):
    # An unusable socket directory in the producer: it says so once and announces frames over DDS only.
    producer = Producer(VIDACTION_DOORBELL_DIR='/proc/no-such-dir')
    try:
        producer.expect('ring')
        consumer = Consumer(context, bell=True)
        consumer.wait_for_publisher()
        producer.say('go 2')                    # once it matched both our subscriptions (frames and observer)
        producer.expect('sent')
        producer.say(f'loan 0 {FRAMES}')
        stats = json.loads(producer.expect('loaned')[1])
        assert 'doorbell_sent' not in stats                            # no doorbell in the producer
        assert consumer.wait_for(2 * FRAMES), (f'only {[m.sequence for m, _ in consumer.results]} arrived; '
                                               f'{consumer.frames.stats()}')
        check_frames(consumer.results, range(2 * FRAMES))
        assert consumer.frames.counts['dds'] == 2 * FRAMES and consumer.frames.counts['bell'] == 0
        assert consumer.frames.counts['registrations'] == 0            # no doorbell advertised in the ring
        close_cleanly(producer, consumer)
    finally:
        producer.close()


def test_a_consumer_whose_iceoryx2_reader_cannot_open_still_gets_every_ring_frame(context):
    # Every consumer opens an iceoryx2 reader ahead of the first frame (for a camera with transport iox). Any
    # iceoryx2 failure there (here: the frame service already at its subscriber limit) must cost only that
    # path: one warning, and the ring's frames arrive as before.
    from vidaction_ros.transport import iox_frames
    if not iox_frames.available():
        pytest.skip('iceoryx2 is not installed')
    # Filled up to the limit, counting readers other tests of this process may hold (iox_refs keeps an
    # observer's for the life of the process).
    name = iox_frames.service_name('/camera/frame', context.get_domain_id())
    frames_service, _ = iox_frames._services(name)
    held = int(frames_service.dynamic_config.number_of_subscribers)
    blockers = [iox_frames.IoxFrameReader(name) for _ in range(iox_frames.MAX_SUBSCRIBERS - held)]
    producer = Producer()
    try:
        producer.expect('ring')
        consumer = Consumer(context, bell=True)
        # The service exists (the blockers made it), so the consumer tries to open a reader there and fails.
        wait_until(lambda: consumer.frames.iox_state == 'failed', 30,
                   lambda: f'iox_state stayed {consumer.frames.iox_state!r}')
        assert consumer.frames.iox is None
        consumer.wait_for_publisher()
        producer.say('go 2')
        producer.expect('sent')
        producer.say(f'loan 0 {FRAMES}')
        producer.expect('loaned')
        assert consumer.wait_for(2 * FRAMES), (f'only {[m.sequence for m, _ in consumer.results]} arrived; '
                                               f'{consumer.frames.stats()}')
        check_frames(consumer.results, range(2 * FRAMES))
        close_cleanly(producer, consumer)
    finally:
        for reader in blockers:
            reader.close()
        producer.close()


def test_a_consumer_of_a_ring_camera_holds_nothing_of_iceoryx2(context):
    # Its reader waits for a camera's iceoryx2 service, which a ring camera never makes: no iceoryx2 node,
    # no subscriber slot taken, however many consumers come and go.
    from vidaction_ros.transport import iox_frames, iox_refs
    if not iox_frames.available():
        pytest.skip('iceoryx2 is not installed')
    # Earlier tests of this process may keep the topic's service: observers' readers live as long as the
    # process (an overlay keeps resolving); closed here, the service goes with its last port.
    iox_refs.close_observers()
    service = iox_frames.service_name('/camera/frame', context.get_domain_id())
    wait_until(lambda: not iox_frames.service_exists(service), 30, f'something still holds {service}')
    producer = Producer()
    try:
        producer.expect('ring')
        consumer = Consumer(context, bell=True)
        consumer.wait_for_publisher()
        producer.say('go 2')
        producer.expect('sent')
        assert consumer.wait_for(FRAMES), f'only {len(consumer.results)} of {FRAMES} frames arrived'
        assert consumer.frames.iox_state == 'waiting' and consumer.frames.iox is None
        assert not iox_frames.service_exists(service)
        close_cleanly(producer, consumer)
    finally:
        producer.close()
