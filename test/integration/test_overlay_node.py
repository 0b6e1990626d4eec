"""The overlay node in the real pipeline: JPEG pictures on overlay/compressed that decode to the working frame,
stamped like the Action they draw, with the banner in that Action's colour; and a red FAILSAFE banner when the
embedder dies (processes mode: the overlay reads frames out of the camera's shared-memory ring)."""
import os
import signal

import cv2
import numpy as np
import pytest
import rclpy
from sensor_msgs.msg import CompressedImage

from bag_helpers import TopicCollector
from ros_helpers import child_running, start_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL_LOAD_S = 240
TOLERANCE = 60


def banner_colour(code: int, failsafe: bool):
    from vidaction_ros.overlay.draw import action_colour
    return action_colour(code, failsafe)


def stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


@pytest.fixture
def topics():
    from vidaction_ros import qos
    from vidaction_ros.msg import Action
    context = rclpy.Context()
    rclpy.init(context=context)
    collector = TopicCollector({'overlay/compressed': (CompressedImage, qos.OVERLAY), 'action': (Action, qos.ACTION)},
                               context=context)
    yield collector
    collector.executor.shutdown()
    collector.node.destroy_node()
    rclpy.try_shutdown(context=context)


def save_for_docs(name: str, data: bytes) -> None:
    """VIDACTION_DOCS_IMAGES=docs/images: keep this run's picture for the README (made by the test itself)."""
    folder = os.environ.get('VIDACTION_DOCS_IMAGES')
    if folder:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, name), 'wb') as f:
            f.write(data)


def decode(msg) -> np.ndarray:
    assert msg.format == 'jpeg'
    image = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, 'overlay is not a decodable JPEG'
    return image


def test_overlay_pictures_match_the_actions_they_draw(tmp_path, video_path, topics):
    log = tmp_path / 'pipeline.log'
    proc = start_pipeline('--mode', 'composed', '--source', video_path, '--loop', 'true', '--overlay', 'true',
                          log_path=str(log))
    try:
        assert topics.wait_for(lambda c: len(c.messages('overlay/compressed')) >= 5, MODEL_LOAD_S), \
            log.read_text()[-3000:]
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(60)
    assert code == 0, log.read_text()[-2000:]
    actions = {stamp_ns(a): a for a in topics.messages('action') if a.trigger != 'watchdog'}
    pictures = topics.messages('overlay/compressed')
    save_for_docs('overlay.jpg', bytes(pictures[-1].data))
    for picture in pictures[:5]:
        image = decode(picture)
        assert image.shape == (480, 640, 3)            # vtest.avi 768x576 at the working size (max 640x480)
        action = actions.get(stamp_ns(picture))
        assert action is not None, 'an overlay stamped like no Action'
        expected = np.array(banner_colour(action.action_code, False))
        assert np.all(np.abs(image[2, 630].astype(int) - expected) <= TOLERANCE), (image[2, 630], action.action)


def test_overlay_shows_a_red_failsafe_banner_when_the_embedder_dies(tmp_path, video_path, topics):
    log = tmp_path / 'pipeline.log'
    proc = start_pipeline('--mode', 'processes', '--source', video_path, '--loop', 'true', '--overlay', 'true',
                          log_path=str(log))
    try:
        assert topics.wait_for(lambda c: len(c.messages('overlay/compressed')) >= 2, MODEL_LOAD_S), \
            log.read_text()[-3000:]
        embedder = child_running(proc.pid, 'embedder_node')
        os.kill(embedder, signal.SIGKILL)
        seen = len(topics.messages('overlay/compressed'))

        def red_banner(c) -> bool:
            failsafes = {stamp_ns(a) for a in c.messages('action') if a.trigger == 'watchdog'}
            return any(stamp_ns(m) in failsafes and
                       np.all(np.abs(decode(m)[2, 630].astype(int) - np.array(banner_colour(5, True))) <= TOLERANCE)
                       for m in c.messages('overlay/compressed')[seen:])
        assert topics.wait_for(red_banner, 60), log.read_text()[-3000:]
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(60)
    assert code == 0, log.read_text()[-2000:]
