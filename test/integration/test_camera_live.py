"""The live camera on a real video file: each grabbed frame is rated, downscaled, gated and published on the
capture thread itself, and a frame the reasoning rate skips costs no pixel work.

Expected results from first principles: the demo video is 10 fps and stamped with its media time (index / 10),
so a 2.5 Hz reasoning rate takes every 4th frame (0, 4, 8, ...); every frame is 768x576, so each taken frame is
downscaled (to 640x480) into one transport loan, and only those are loaned.
"""
import threading

import pytest
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter

from ros_helpers import wait_until
from vidaction_ros import qos
from vidaction_ros.msg import FrameRef
from vidaction_ros.nodes.camera_node import CameraNode

pytestmark = pytest.mark.integration

PUBLISH = 6


class Rig:
    """A CameraNode with these parameters and a test node that keeps what `keep` makes of each FrameRef on
    camera/frame; the test node (and the camera, when spin_camera) spun on an executor thread."""

    def __init__(self, context, overrides: dict, keep=lambda msg: msg, spin_camera: bool = False):
        self.camera = CameraNode('camera', context=context,
                                 parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
        self.node = Node('test_frames', context=context)
        self.got, self.lock, self._keep = [], threading.Lock(), keep
        self.node.create_subscription(FrameRef, 'camera/frame', self._on_ref, qos.frame_qos(False))
        self.executor = SingleThreadedExecutor(context=context)
        for node in ((self.camera, self.node) if spin_camera else (self.node,)):
            self.executor.add_node(node)
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def _on_ref(self, msg):
        with self.lock:
            self.got.append(self._keep(msg))

    def close(self):
        self.executor.shutdown()
        self.camera.close()
        self.camera.destroy_node()
        self.node.destroy_node()


def test_live_file_camera_rates_downscales_and_publishes_on_the_capture_thread(context, video_path):
    rig = Rig(context, {'source': video_path, 'realtime': False, 'rate_hz': 2.5, 'gate_enabled': False,
                        'stamp_source': 'media', 'transport': 'inproc', 'max_frames': PUBLISH, 'autostart': False})
    camera, refs = rig.camera, rig.got
    loaning_threads = []
    try:
        camera.trigger_configure()
        loan = camera.sender.loan

        def spy_loan(height, width):
            loaning_threads.append(threading.current_thread().name)
            return loan(height, width)
        camera.sender.loan = spy_loan      # before the capture thread starts: it sees every loan
        camera.trigger_activate()
        wait_until(camera.finished.is_set, 60, lambda: f'camera never finished: {camera.counts}')
        counts = dict(camera.counts)
        assert counts['published'] == PUBLISH
        # Only frames the rate took were downscaled (one loan each), all of them on the capture thread.
        assert len(loaning_threads) == PUBLISH and set(loaning_threads) == {'capture'}
        assert counts['rate_skipped'] == counts['captured'] - PUBLISH >= 3 * (PUBLISH - 1)
        wait_until(lambda: len(refs) == PUBLISH, 30, lambda: f'{len(refs)} of {PUBLISH} FrameRefs on DDS')
        with rig.lock:
            stamps = [r.header.stamp.sec + r.header.stamp.nanosec * 1e-9 for r in refs]
            assert stamps == pytest.approx([0.4 * i for i in range(PUBLISH)], abs=1e-6)   # frames 0, 4, 8...
            assert all((r.width, r.height, r.source_width, r.source_height) == (640, 480, 768, 576) for r in refs)
            assert [r.sequence for r in refs] == list(range(PUBLISH))
    finally:
        rig.close()


@pytest.mark.parametrize('padding', [0, 16])
def test_a_topic_image_at_working_size_is_published_contiguous_with_its_pixels(context, padding):
    """640x480 bgr8 input is already the working size: published as it is when its rows are packed, through the
    transport's loan when each row is padded (step > width * 3); either way the frame a consumer resolves is
    contiguous and holds exactly the input's pixels (expected: the input, rows cut to width * 3 bytes)."""
    import numpy as np
    from sensor_msgs.msg import Image
    from vidaction_ros.transport.frame_transport import resolve
    rig = Rig(context, {'source': 'topic', 'image_topic': 'test_image', 'transport': 'inproc', 'gate_enabled': False,
                        'rate_hz': 240.0, 'autostart': True}, keep=resolve, spin_camera=True)
    camera, frames = rig.camera, rig.got
    source = rig.node.create_publisher(Image, 'test_image', qos.IMAGE)
    try:
        wait_until(lambda: source.get_subscription_count() > 0 and camera.sender.publisher.get_subscription_count()
                   > 0, 30, 'camera and test never matched')
        pixels = np.random.default_rng(padding).integers(0, 256, (480, 640, 3), dtype=np.uint8)
        step = 640 * 3 + padding
        rows = np.zeros((480, step), np.uint8)
        rows[:, :640 * 3] = pixels.reshape(480, -1)
        source.publish(Image(height=480, width=640, encoding='bgr8', step=step, data=rows.tobytes()))
        wait_until(lambda: len(frames) == 1, 30, lambda: f'no frame published: {camera.counts}')
        assert frames[0].flags.c_contiguous and np.array_equal(frames[0], pixels)
    finally:
        rig.close()
