"""A static scene behind the camera's scene-change gate: the policy keeps its decision for every held-back frame
(TRIGGER_UNCHANGED), so the controller keeps hearing fresh Actions and the watchdog stays quiet although nothing
is embedded; a dead embedder still trips the watchdog as soon as the scene changes.

Four node processes, the camera subscribed to an Image topic this test publishes: one real video frame, the
same pixels every 100 ms (a static scene by construction), then its negative (a scene change).
Expected results from first principles: identical pixels give a gate score of 0 (< threshold), so every frame
after the first is held back until the max-skip interval, set far beyond the test here.
"""
import math
import os
import signal
import threading
import time

import pytest
import rclpy

from conftest import read_frame
from ros_helpers import ActionCollector, stamp_s, start_node, stop, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEADLINE_S = 0.5
PERIOD_S = 0.05
SLACK_S = 0.5        # scheduling slack on a loaded 2-core machine (see test_watchdog_failsafe)
FRAME_PERIOD_S = 0.1


class StaticScene:
    """Publishes one frame's pixels as sensor_msgs/Image at 10 Hz, stamped with the wall clock."""

    def __init__(self, context, frame):
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from sensor_msgs.msg import Image
        from vidaction_ros import qos
        self.node = Node('test_static_scene', context=context)
        self.pub = self.node.create_publisher(Image, 'image_raw', qos.IMAGE)
        self.msg = Image()
        self.stamps = []
        self.lock = threading.Lock()
        self.show(frame)
        self.node.create_timer(FRAME_PERIOD_S, self._tick)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def show(self, frame) -> float:
        """From the next tick on, these pixels; returns a wall time every frame of them is stamped after."""
        with self.lock:
            self.msg.height, self.msg.width = frame.shape[:2]
            self.msg.encoding, self.msg.step = 'bgr8', frame.shape[1] * 3
            self.msg.data = frame.tobytes()
            return self.node.get_clock().now().nanoseconds * 1e-9

    def _tick(self):
        with self.lock:
            self.msg.header.stamp = self.node.get_clock().now().to_msg()
            self.pub.publish(self.msg)
            self.stamps.append(stamp_s(self.msg))

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()


def test_static_scene_keeps_the_decision_and_a_dead_embedder_still_trips_the_watchdog(tmp_path):
    from vidaction_ros.paths import config_file
    params = str(config_file('vidaction.yaml'))
    log = open(tmp_path / 'nodes.log', 'w')
    procs = {
        'camera': start_node('camera', params, {'source': 'topic', 'image_topic': 'image_raw', 'rate_hz': 10.0,
                                                'gate_max_skip_s': 3600.0}, log),
        'memory': start_node('memory', params, {}, log),
        'policy': start_node('policy', params, {'watchdog_deadline_s': DEADLINE_S,
                                                'watchdog_period_s': PERIOD_S}, log),
        'embedder': start_node('embedder', params, {}, log),
    }
    context = rclpy.Context()
    rclpy.init(context=context)
    collector = ActionCollector(context=context)
    # 160x120 (57 KB): one datagram, so the best-effort image QoS does not lose fragments of it on a loaded
    # machine (640x480 Images over best effort can lose most samples; see bench/transport.py).
    still = read_frame(100, size=(160, 120))
    # Two warm-up scenes, far apart and far from the still one (mean grey differences of tens, the gate's
    # threshold is 2): each passes the gate the first time it is shown.
    warm = (still // 2, still // 2 + 128)
    scene = None
    try:
        # Warm-up, a condition rather than a guess at how long discovery takes: a scene is held until a kept
        # Action for it arrives, which proves every link this test relies on (image -> camera -> embedder ->
        # memory -> policy -> this collector, and camera -> policy for held-back frames). Until then a frame
        # the camera handed on may have gone nowhere (a match not complete at both ends, a decision published
        # before its subscriber matched), and a static scene would wait on it for gate_max_skip_s: so when
        # nothing is kept within a while, the other warm-up scene is shown, which passes the gate anew.
        scene = StaticScene(context, warm[0])
        deadline = time.monotonic() + 240
        shown = 0
        while not collector.wait_for(lambda m: any(a.trigger == 'unchanged' for a in m), timeout=15):
            assert time.monotonic() < deadline, 'no Action kept for a static scene within 240 s: ' + \
                (tmp_path / 'nodes.log').read_text()[-3000:]
            shown += 1
            scene.show(warm[shown % 2])
        # The static scene under test: its first frame is a scene change (it passes the gate and is decided),
        # every later one is held back. Actions about it are stamped after shown_at, warm-up ones before.
        shown_at = scene.show(still)

        def static(m):
            return [a for a in m if stamp_s(a) >= shown_at]

        def kept(m):
            return [a for a in static(m) if a.trigger == 'unchanged']
        # Many frames of a static scene go by: one decided, the rest kept (a full second's worth at least).
        assert collector.wait_for(lambda m: len(kept(m)) >= 30, timeout=240), \
            (tmp_path / 'nodes.log').read_text()[-3000:]
        with collector.changed:
            messages = list(collector.messages)
        decided = [a for a in static(messages) if a.trigger not in ('unchanged', 'watchdog')]
        assert len(decided) == 1, [(a.trigger, a.frame_sequence) for a in static(messages)]   # one went through
        first = messages.index(decided[0])
        seq = decided[0].frame_sequence
        # From its decision on: no failsafe however long the scene stays static, an Action for every held-back
        # frame, each keeping the decided frame's action and naming that frame.
        after = messages[first + 1:]
        assert all(a.trigger == 'unchanged' for a in after), [a.trigger for a in after]
        assert all(a.action == decided[0].action and a.frame_sequence == seq and not a.changed for a in after)
        assert all(f'unchanged since frame #{seq}' in a.reason for a in after)
        assert all(math.isnan(a.embed_ms) and a.capture_to_decide_ms >= 0 for a in after)
        # Stamped with the held-back frames' capture stamps: published ones, strictly increasing.
        published = set(scene.stamps)
        assert all(any(abs(stamp_s(a) - s) < 1e-6 for s in published) for a in after)
        kept_stamps = [stamp_s(a) for a in after]
        assert kept_stamps == sorted(set(kept_stamps))

        # The embedder dies; the scene changes. The camera hands the new frame on, nothing decides it, so
        # the following held-back frames cannot keep a decision: the watchdog fires.
        os.killpg(procs['embedder'].pid, signal.SIGKILL)
        procs['embedder'].wait()
        killed_at = len(collector.messages)
        scene.show(255 - still)     # the negative: far above the gate threshold by construction
        assert collector.wait_for(lambda m: any(a.trigger == 'watchdog' for a in m[killed_at:]), timeout=60)
        with collector.changed:
            messages = list(collector.messages)
        failsafe_index = next(i for i in range(killed_at, len(messages)) if messages[i].trigger == 'watchdog')
        last_good = messages[failsafe_index - 1]
        assert last_good.trigger in ('unchanged', 'default', 'prompt', 'hold')
        gap = stamp_s(messages[failsafe_index]) - stamp_s(last_good)
        assert DEADLINE_S <= gap <= DEADLINE_S + PERIOD_S + SLACK_S, gap
        assert messages[failsafe_index].frame_sequence == seq    # the newest frame that was decided
    finally:
        if scene is not None:
            scene.close()
        collector.close()
        rclpy.try_shutdown(context=context)
        for proc in procs.values():
            stop(proc)
        log.close()
    for name, proc in procs.items():
        if name != 'embedder':
            assert proc.returncode == 0, f'{name} exited {proc.returncode}: ' + \
                (tmp_path / 'nodes.log').read_text()[-3000:]


def test_frames_nobody_took_never_become_the_gates_reference(context):
    """A camera up before its embedder: the static scene's first frames reach nobody. The gate must not hold
    the scene back once a subscriber appears (it would wait gate_max_skip_s, here an hour, for a decision).
    First principles: identical pixels score 0 < threshold, so with a subscriber exactly the first of them
    passes; without one, every one passes and is counted as unheard."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.time import Time
    from sensor_msgs.msg import Image
    from vidaction_ros import qos
    from vidaction_ros.msg import FrameRef
    from vidaction_ros.nodes.camera_node import CameraNode
    overrides = {'source': 'topic', 'image_topic': 'test_still', 'transport': 'inproc', 'rate_hz': 240.0,
                 'gate_max_skip_s': 3600.0, 'autostart': True}
    camera = CameraNode('camera', context=context,
                        parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
    test = Node('test_still_source', context=context)
    source = test.create_publisher(Image, 'test_still', qos.IMAGE)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(camera)
    executor.add_node(test)
    threading.Thread(target=executor.spin, daemon=True).start()
    still = read_frame(100, size=(160, 120))
    msg = Image(height=120, width=160, encoding='bgr8', step=160 * 3, data=still.tobytes())
    start_ns = test.get_clock().now().nanoseconds

    def show_still(expect_handled: int):
        # Stamped on a 10 Hz grid, not with the time of publishing: the camera's rate limit (240 Hz) works in
        # frame time, and on a fast machine two stills sent one after the other can be under 1/240 s apart.
        msg.header.stamp = Time(nanoseconds=start_ns + expect_handled * 100_000_000).to_msg()
        source.publish(msg)
        wait_until(lambda: camera.counts['published'] + camera.counts['gated'] >= expect_handled, 20,
                   lambda: f'the camera did not handle still #{expect_handled} within 20 s: {camera.counts}')
    try:
        wait_until(lambda: source.get_subscription_count() > 0, 20, 'the camera never subscribed to test_still')
        for n in range(1, 4):
            show_still(n)
        assert camera.counts['published'] == 3 and camera.counts['gated'] == 0 and camera.counts['unheard'] == 3
        received = []
        test.create_subscription(FrameRef, 'camera/frame', received.append, qos.FRAME)
        wait_until(lambda: camera.sender.publisher.get_subscription_count() > 0, 20,
                   'camera/frame never matched the test subscription')
        for n in range(4, 7):
            show_still(n)
        assert camera.counts['published'] == 4 and camera.counts['gated'] == 2 and camera.counts['unheard'] == 3
    finally:
        executor.shutdown()
        camera.close()
        camera.destroy_node()
        test.destroy_node()
