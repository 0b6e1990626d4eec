"""Lifecycle transitions driven from outside, through the nodes' real lifecycle services, as
lifecycle_manager / `ros2 lifecycle set` do: what each state holds and whether data flows."""
import os
import subprocess
import tempfile
import time

import pytest
import rclpy
from lifecycle_msgs.msg import Transition

from ros_helpers import stop, wait_until

pytestmark = pytest.mark.integration


def start(module, name, overrides, log, preexec_fn=None):
    from vidaction_ros.nodes.pipeline import ros_param_arg
    cmd = [os.sys.executable, '-m', f'vidaction_ros.nodes.{module}', '--ros-args', '-r', f'__node:={name}']
    for key, value in overrides.items():
        cmd += ['-p', ros_param_arg(key, value)]
    return subprocess.Popen(cmd, cwd=tempfile.gettempdir(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env=dict(os.environ), preexec_fn=preexec_fn)


@pytest.fixture
def ros():
    context = rclpy.Context()
    rclpy.init(context=context)
    from vidaction_ros.nodes.lifecycle_manager import LifecycleManager
    manager = LifecycleManager(name='test_lifecycle_driver', context=context)
    yield manager
    manager.destroy_node()
    rclpy.try_shutdown(context=context)


class FrameCounter:
    """The frames on camera/frame, each kept as the wall time the camera published it (FrameRef.times.published:
    same machine, same clock as time.time() here), so that a frame still in flight is never taken for one
    sent later."""

    def __init__(self, node):
        from vidaction_ros import qos
        from vidaction_ros.msg import FrameRef
        self.published = []
        self.node = node
        node.create_subscription(FrameRef, 'camera/frame', self._on, qos.frame_qos(False))

    def _on(self, msg):
        self.published.append(msg.times.published.sec + msg.times.published.nanosec * 1e-9)

    def _spin(self, done, seconds):
        """Take frames in until done() or `seconds` have passed; done()."""
        from rclpy.executors import SingleThreadedExecutor
        executor = SingleThreadedExecutor(context=self.node.context)
        executor.add_node(self.node)
        deadline = time.monotonic() + seconds
        try:
            while not done() and time.monotonic() < deadline:
                executor.spin_once(timeout_sec=0.1)
        finally:
            executor.remove_node(self.node)
            executor.shutdown()
        return done()

    def frames_within(self, seconds):
        """How many frames arrive in the next `seconds`: an observation window, for 'nothing flows' (the one
        claim no event can end early)."""
        start = len(self.published)
        self._spin(lambda: False, seconds)
        return len(self.published) - start

    def published_after(self, t, seconds):
        """Watch for `seconds` (as frames_within), then how many frames of all received were published after
        wall time t: frames sent before t and still in flight do not count, however late they arrive."""
        self._spin(lambda: False, seconds)
        return sum(p > t for p in self.published)

    def wait_published_after(self, t, count, timeout=60.0):
        """Until `count` frames published after wall time t have arrived (a condition, with a deadline)."""
        return self._spin(lambda: sum(p > t for p in self.published) >= count, timeout)


def frame_service() -> bool:
    """Whether the camera's iceoryx2 frame service exists (this run's ROS domain has its own services)."""
    from vidaction_ros.transport import iox_frames
    return iox_frames.service_exists(iox_frames.service_name('/camera/frame'))


def test_camera_states_hold_what_they_should(ros, tmp_path, video_path):
    log = open(tmp_path / 'camera.log', 'w')
    camera = start('camera_node', 'camera', {'autostart': False, 'source': video_path, 'loop': True,
                                             'transport': 'iox', 'gate_enabled': False}, log)
    from vidaction_ros.transport import iox_refs
    iox_refs.close_observers()       # an earlier test's observer in this process would keep the service
    try:
        counter = FrameCounter(ros)
        assert ros.state_of('camera', timeout=60) == 'unconfigured'
        assert ros.count_publishers('camera/frame') == 0 and not frame_service()          # holds nothing yet

        assert ros.transition('camera', Transition.TRANSITION_CONFIGURE, 'configure')
        assert ros.state_of('camera') == 'inactive'
        assert frame_service()                                                    # samples allocated
        assert counter.frames_within(2.0) == 0                                    # but nothing flows

        asked = time.time()
        assert ros.transition('camera', Transition.TRANSITION_ACTIVATE, 'activate')
        assert counter.wait_published_after(asked, 5), 'no 5 frames within 60 s of activation'   # it flows

        assert ros.transition('camera', Transition.TRANSITION_DEACTIVATE, 'deactivate')
        inactive = time.time()
        # Frames published before the deactivation finished may still be in flight and arrive in the window:
        # only a frame published after it would be wrong.
        assert counter.published_after(inactive, 2.5) == 0

        asked = time.time()
        assert ros.transition('camera', Transition.TRANSITION_ACTIVATE, 'activate')   # again: resumes
        assert counter.wait_published_after(asked, 5), 'no 5 frames within 60 s of the second activation'
        assert ros.transition('camera', Transition.TRANSITION_DEACTIVATE, 'deactivate')

        assert ros.transition('camera', Transition.TRANSITION_CLEANUP, 'cleanup')
        assert ros.state_of('camera') == 'unconfigured'
        wait_until(lambda: not frame_service(), 30, 'the frame service outlived cleanup by 30 s')   # released
        wait_until(lambda: ros.count_publishers('camera/frame') == 0, 30,          # publisher destroyed
                   'the camera/frame publisher is still in the graph 30 s after cleanup')
    finally:
        assert stop(camera) == 0
        log.close()


def test_failed_configure_names_the_reason_and_leaves_the_node_unconfigured(ros, tmp_path):
    log = open(tmp_path / 'embedder.log', 'w')
    embedder = start('embedder_node', 'embedder', {'autostart': False, 'backend': 'clip_onnx',
                                                   'model_path': str(tmp_path / 'no_such_model')}, log)
    try:
        assert ros.state_of('embedder', timeout=60) == 'unconfigured'
        assert not ros.transition('embedder', Transition.TRANSITION_CONFIGURE, 'configure')
        assert ros.state_of('embedder') == 'unconfigured'
        assert embedder.poll() is None                       # still up: it can be configured again later
    finally:
        stop(embedder)
        log.close()
    text = (tmp_path / 'embedder.log').read_text()
    assert 'configure failed' in text and 'no_such_model' in text


def test_autostart_node_with_a_bad_source_exits_with_the_reason(tmp_path):
    log = open(tmp_path / 'camera.log', 'w')
    camera = start('camera_node', 'camera', {'source': str(tmp_path / 'missing.avi')}, log)
    try:
        assert camera.wait(60) == 2
    finally:
        stop(camera)
        log.close()
    assert 'missing.avi' in (tmp_path / 'camera.log').read_text()


def test_a_node_started_with_sigint_ignored_still_stops_on_sigint(ros, tmp_path):
    """A background start (nohup, `cmd &` in a script, some CI runners) hands the child SIGINT as ignored;
    `ros2 launch` and our harnesses stop nodes with SIGINT, so the node must take it back."""
    import signal
    log = open(tmp_path / 'memory.log', 'w')
    node = start('memory_node', 'memory', {'autostart': False}, log,
                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert ros.state_of('memory', timeout=60) == 'unconfigured'   # up and spinning
        os.killpg(node.pid, signal.SIGINT)
        node.wait(30)           # TimeoutExpired if SIGINT stayed ignored
        assert node.returncode == 0, (tmp_path / 'memory.log').read_text()[-2000:]
    finally:
        stop(node)
        log.close()
