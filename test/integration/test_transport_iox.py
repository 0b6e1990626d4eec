"""Transport iox across real processes: a camera-side FrameSender(mode='iox') in a child process, a
FrameSubscription here woken by iceoryx2 (no DDS on the hot path) that checks every pixel against what the
producer must have written (seeded by sequence), an observer that only hears the DDS FrameRef, and the
whole pipeline in processes mode on the bundled video with camera.transport=iox."""
import subprocess
import sys
import tempfile
import threading
import zlib

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from vidaction_ros import qos
from vidaction_ros.msg import FrameRef
from vidaction_ros.transport import iox_frames, iox_refs
from vidaction_ros.transport.frame_store import FrameLost
from vidaction_ros.transport.frame_transport import FrameSubscription, borrow, resolve

from ros_helpers import run_until_frame_decided

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not iox_frames.available(), reason='iceoryx2 is not installed')]
FRAMES = 12
H, W = 240, 320
TIMEOUT_S = 120.0

PRODUCER = r'''
import sys, time
import numpy as np
import rclpy
from rclpy.node import Node
from vidaction_ros.msg import FrameRef
from vidaction_ros.transport.frame_transport import FrameSender
frames, h, w = (int(v) for v in sys.argv[1:4])
rclpy.init()
node = Node('iox_test_camera')
sender = FrameSender(node, 'iox', lockstep=True, max_frame=(w, h))
print('service', sender.iox.name, flush=True)
deadline = time.monotonic() + 100
# Both of the test's DDS subscriptions matched and its iceoryx2 reader connected.
while (sender.publisher.get_subscription_count() < 2 or sender.iox.subscribers() < 1) and time.monotonic() < deadline:
    rclpy.spin_once(node, timeout_sec=0.05)
for n in range(frames):
    msg = FrameRef()
    msg.sequence = n
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1000 + n, 500
    msg.header.frame_id = 'iox_cam'
    msg.source_width, msg.source_height = 2 * w, 2 * h
    msg.scene_change, msg.keyframe = 1.5 * n, n % 2 == 0
    view = sender.loan(h, w)
    view[:] = np.random.default_rng(n).integers(0, 256, (h, w, 3), np.uint8)
    sender.send_loaned(msg, view)
    time.sleep(0.1)
print('sent', sender.stats()['iox_sent'], flush=True)
sys.stdin.readline()
sender.close()
node.destroy_node()
rclpy.shutdown()
'''


def expected(sequence):
    return np.random.default_rng(sequence).integers(0, 256, (H, W, 3), np.uint8)


def test_frames_cross_processes_through_iceoryx2_exactly_and_without_dds(tmp_path):
    # An observer's reader lives as long as its process: one that an earlier test of this process opened on
    # this topic would already hold the first frame this test expects to be lost to its observer.
    iox_refs.close_observers()
    context = rclpy.Context()
    rclpy.init(context=context)
    node = Node('iox_test_consumer', context=context)
    got, observed, lock, done = [], [], threading.Lock(), threading.Event()

    def on_frame(msg):
        with borrow(msg) as view:                        # in place: the sample this process holds
            in_place = zlib.crc32(np.ascontiguousarray(view).tobytes())
        copy = resolve(msg)
        with lock:
            got.append((msg, in_place, zlib.crc32(copy.tobytes())))
            if msg.sequence == FRAMES - 1:
                done.set()

    def on_ref(msg):                                     # an observer: only the DDS FrameRef
        try:
            outcome = zlib.crc32(resolve(msg).tobytes())
        except FrameLost as err:
            outcome = err
        with lock:
            observed.append((msg, outcome))

    frames = FrameSubscription(node, 'camera/frame', on_frame, qos.frame_qos(True))
    node.create_subscription(FrameRef, 'camera/frame', on_ref, qos.frame_qos(True))
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    producer = subprocess.Popen([sys.executable, '-c', PRODUCER, str(FRAMES), str(H), str(W)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, cwd=tempfile.gettempdir())
    try:
        service = producer.stdout.readline().split()[-1]
        assert done.wait(TIMEOUT_S), f'frame {FRAMES - 1} never arrived; got {[m.sequence for m, *_ in got]}'
        assert producer.stdout.readline().split() == ['sent', str(FRAMES)]
        stats, first = frames.stats(), frames.iox.first_sequence
    finally:
        producer.communicate('exit\n', timeout=60)
        frames.destroy()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    sequences = [msg.sequence for msg, *_ in got]
    assert sequences == sorted(set(sequences))
    # Every frame from the first one the reader received either reached the callback or was counted as
    # dropped (newest wins); on a loaded machine the first may have been overwritten before the reader looked.
    assert first is not None and first <= sequences[0]
    assert len(sequences) + stats['iox_dropped'] == FRAMES - first
    assert stats['iox'] == len(sequences) and stats['dds'] == 0, stats
    for msg, in_place, copied in got:
        crc = zlib.crc32(expected(msg.sequence).tobytes())
        assert in_place == crc and copied == crc, f'frame {msg.sequence} pixels differ'
        assert msg.transport == 'iox' and msg.store == service and msg.generation == msg.sequence
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (1000 + msg.sequence, 500,
                                                                                          'iox_cam')
        assert (msg.width, msg.height, msg.encoding) == (W, H, 'bgr8')
        assert (msg.source_width, msg.source_height) == (2 * W, 2 * H)
        assert msg.scene_change == pytest.approx(1.5 * msg.sequence) and msg.keyframe == (msg.sequence % 2 == 0)
        assert msg.times.published.sec == 0 or msg.times.published.sec > 0
    # The observer heard every FrameRef on DDS; once its reader was open, frames resolved exactly.
    with lock:
        refs = sorted(observed, key=lambda item: item[0].sequence)
    assert [m.sequence for m, _ in refs] == list(range(FRAMES))
    assert isinstance(refs[0][1], FrameLost)             # sent before the observer's reader existed
    resolved = [(m.sequence, crc) for m, crc in refs if not isinstance(crc, FrameLost)]
    assert resolved, [str(o) for _, o in refs]
    for sequence, crc in resolved:
        assert crc == zlib.crc32(expected(sequence).tobytes())


def test_the_pipeline_decides_every_frame_with_transport_iox(tmp_path, video_path):
    last = 29
    actions, complete, code, text = run_until_frame_decided(
        ['--mode', 'processes', '--lockstep', '--source', video_path, '--set', 'camera.transport=iox',
         '--set', f'camera.max_frames={last + 1}', '--set', 'camera.lockstep_action_subscribers=2'],
        last, tmp_path / 'pipeline.log', timeout=600)
    assert complete, f'frame {last} was never decided; log tail:\n{text[-3000:]}'
    assert [a.frame_sequence for a in actions] == list(range(last + 1))
    assert 'transport=iox' in text
    assert 'Traceback' not in text and 'FrameLost' not in text and 'frame lost' not in text.lower()
    assert code == 0
