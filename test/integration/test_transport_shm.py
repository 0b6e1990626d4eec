"""Multi-process mode: a FrameSender(mode='shm') in a child process publishes FrameRefs over real DDS; this
process subscribes, resolves the pixels from the shared-memory ring and checks them exactly. Then the
producer's exit (clean, and SIGKILL) and what a consumer sees afterwards."""
import os
import queue
import subprocess
import sys
import tempfile
import threading

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from vidaction_ros import qos
from vidaction_ros.frame_store import FrameLost
from vidaction_ros.msg import FrameRef
from vidaction_ros.shm_ring import SHM_DIR, segment_path
from vidaction_ros.transport import MODES, FrameSender, borrow, resolve

pytestmark = pytest.mark.integration
FRAMES = 12

# The camera side: a real node with a real FrameSender in its own process. It publishes FRAMES frames whose
# pixels the test can recompute (seeded by sequence), then waits for 'exit' (clean close) or a SIGKILL.
PRODUCER = r'''
import sys
import threading
import numpy as np
import rclpy
from rclpy.node import Node
from vidaction_ros.msg import FrameRef
from vidaction_ros.transport import FrameSender
frames = int(sys.argv[1])
rclpy.init()
node = Node('shm_test_camera')
sender = FrameSender(node, 'shm', lockstep=True, slots=frames + 4, max_frame=(640, 480))
print('ring', sender.ring.name, flush=True)
for line in sys.stdin:                        # 'go' once the test's subscriber matched, then 'exit'
    if line.strip() == 'go':
        matched = threading.Event()
        for _ in range(1200):                 # until our writer matched the subscriber too (bounded)
            if sender.publisher.get_subscription_count() > 0:
                break
            matched.wait(0.05)
        for seq in range(frames):
            image = np.random.default_rng(seq).integers(0, 256, (480, 640, 3), dtype=np.uint8)
            msg = FrameRef()
            msg.sequence = seq
            sender.send(msg, image)
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
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, '-c', PRODUCER, str(FRAMES)], cwd=tempfile.gettempdir(),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=dict(os.environ))
        self.lines = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line.split())

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
    """A subscriber node resolving every FrameRef the moment it arrives, as the embedder does."""

    def __init__(self, context):
        self.node = Node('test_shm_consumer', context=context)
        self.results, self.changed = [], threading.Condition()
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

    def wait_for(self, count: int, timeout: float = 60.0) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.results) >= count, timeout)

    def wait_for_publisher(self, timeout: float = 60.0) -> bool:
        done = threading.Event()
        for _ in range(int(timeout / 0.05)):       # discovery: bounded wait on the graph
            if self.node.count_publishers('camera/frame') > 0:
                return True
            done.wait(0.05)
        return False


@pytest.fixture
def ros():
    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    rclpy.try_shutdown(context=context)


def test_shm_is_a_transport_mode():
    assert 'shm' in MODES and FrameRef.TRANSPORT_SHM == 'shm'


def test_frames_cross_processes_through_shared_memory_exactly(ros):
    producer = Producer()
    try:
        ring = producer.expect('ring')[1]
        assert ring.startswith('vidaction_shm_test_camera_')
        assert os.path.exists(segment_path(ring))
        consumer = Consumer(ros)
        assert consumer.wait_for_publisher(), 'the producer never appeared on camera/frame'
        producer.say('go')
        producer.expect('sent')
        assert consumer.wait_for(FRAMES), f'only {len(consumer.results)} of {FRAMES} FrameRefs arrived'
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
        consumer.executor.shutdown()
    finally:
        producer.close()


def test_a_sigkilled_camera_leaves_nothing_that_breaks_the_next_start(ros):
    producer = Producer()
    try:
        ring = producer.expect('ring')[1]
        consumer = Consumer(ros)
        assert consumer.wait_for_publisher()
        producer.say('go')
        producer.expect('sent')
        assert consumer.wait_for(FRAMES)
        producer.proc.kill()                                           # SIGKILL: no close, no unlink
        producer.proc.wait(60)
        assert os.path.exists(segment_path(ring))
        msg = consumer.results[-1][0]
        with pytest.raises(FrameLost, match='is dead'):
            resolve(msg)                                               # never the dead camera's pixels

        # The next camera of that name (another pid, so another ring) sweeps the dead one and works.
        node = Node('shm_test_camera', context=ros)
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
        consumer.executor.shutdown()
    finally:
        producer.close()
