"""Bag player node: our stand-in for `ros2 bag play` where rosbag2 is not installed (the PyPI ROS wheels
have no rosbag2). Publishes a bag's messages with real rclpy at the recorded pacing (or a rate), optionally
with /clock so the nodes under test can run with use_sim_time:=true.

Thin over ingest.bags (reading) and bag_pacer (pacing), the pure cores; this module only publishes. Messages are
published as their recorded CDR bytes (rclpy's Publisher.publish accepts bytes and hands them to
rcl_publish_serialized_message), so nothing is deserialised and re-serialised on the way: a bag's frames go
out exactly as recorded, header stamps included.

Behaviour that differs from `ros2 bag play`, on purpose:
  - QoS is reliable / volatile / keep-last `qos_depth` for every topic rather than the recorded offered QoS
    (a reliable publisher matches both reliable and best-effort subscribers, so nothing fails to connect);
  - `wait_for_subscribers` holds playback until every topic has that many matched subscriptions, so a test
    (or a pipeline that starts slowly) sees the first message; `ros2 bag play` has no such wait;
  - rate 0 plays as fast as possible;
  - /clock is also published right before each message with that message's bag time, so a use_sim_time
    node never receives a message stamped ahead of its clock.
"""
from __future__ import annotations

import importlib
import threading
import time
from dataclasses import dataclass, field

from rclpy._rclpy_pybind11 import RCLError
import rclpy.logging
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from ..ingest.bags import NS, BagError, bag_info, normalise_topic, read_raw
from .bag_pacer import Pacer

# rclcpp's ClockQoS and rclpy's TimeSource subscription: best effort, keep last 1. A newer clock value
# supersedes an older one, so retransmitting a lost one is pointless.
CLOCK_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                       durability=DurabilityPolicy.VOLATILE)


def message_class(msgtype: str):
    """'sensor_msgs/msg/Image' -> the rclpy message class, or BagError saying which package is missing."""
    parts = msgtype.split('/')
    if len(parts) != 3 or parts[1] not in ('msg', 'srv', 'action') or not all(parts):
        raise BagError(f'cannot map message type {msgtype!r} to a Python class (expected pkg/msg/Name)')
    try:
        return getattr(importlib.import_module(f'{parts[0]}.{parts[1]}'), parts[2])
    except (ImportError, AttributeError) as err:
        raise BagError(f'message type {msgtype} is not installed in this Python environment ({err})') from err


@dataclass
class PlayStats:
    published: dict[str, int] = field(default_factory=dict)
    passes: int = 0
    clocks: int = 0
    stopped_early: bool = False

    @property
    def total(self) -> int:
        return sum(self.published.values())


class BagPlayer(Node):
    def __init__(self, bag: str, *, topics: list[str] | None = None, rate: float = 1.0, loop: bool = False,
                 clock_hz: float = 0.0, qos_depth: int = 10, wait_for_subscribers: int = 0,
                 wait_timeout_s: float = 30.0, name: str = 'bag_player', **kwargs):
        super().__init__(name, **kwargs)
        if clock_hz < 0:
            raise ValueError(f'clock_hz must be >= 0 (0 = no /clock), got {clock_hz}')
        if qos_depth < 1:
            raise ValueError(f'qos_depth must be >= 1, got {qos_depth}')
        self.bag = bag
        self.rate = rate
        Pacer(rate)   # validates the rate now, at startup, not at the first message
        self.loop = loop
        self.clock_hz = clock_hz
        self.wait_for_subscribers = wait_for_subscribers
        self.wait_timeout_s = wait_timeout_s
        self.info = bag_info(bag)
        types = {t.name: t.msgtype for t in self.info.topics}
        requested = None if topics is None else [normalise_topic(t) for t in topics]
        if requested is not None:
            missing = [t for t in requested if t not in types]
            if missing:
                raise BagError(f'{bag} has no topic {", ".join(missing)}; it has: {", ".join(sorted(types))}')
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=qos_depth,
                         reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
        self._topic_pubs = {}
        for topic in (requested if requested is not None else sorted(types)):
            try:
                cls = message_class(types[topic])
            except BagError as err:
                if requested is not None:
                    raise
                # Playing everything else beats refusing a whole bag over one exotic topic.
                self.get_logger().warning(f'skipping {topic}: {err}')
                continue
            self._topic_pubs[topic] = self.create_publisher(cls, topic, qos)
        if not self._topic_pubs:
            raise BagError(f'{bag}: none of its topics can be published here')
        self.topics = sorted(self._topic_pubs)
        self._clock_pub = None
        if clock_hz > 0:
            from rosgraph_msgs.msg import Clock
            self._clock_cls = Clock
            self._clock_pub = self.create_publisher(Clock, '/clock', CLOCK_QOS)
        self._last_clock = -1
        self.get_logger().info(
            f'bag {bag}: {self.info.message_count} messages over {self.info.duration_ns / NS:.2f} s; playing '
            f'{", ".join(self.topics)} at rate {rate:g}{" (as fast as possible)" if rate == 0 else ""}'
            f'{", looping" if loop else ""}{f", /clock at {clock_hz:g} Hz" if clock_hz else ""}')

    # -- helpers ------------------------------------------------------------------------------------------
    def _publish_clock(self, bag_time_ns: int, stats: PlayStats) -> None:
        if self._clock_pub is None or bag_time_ns < self._last_clock:
            return   # sim time never runs backwards within a pass
        self._last_clock = bag_time_ns
        msg = self._clock_cls()
        msg.clock.sec, msg.clock.nanosec = divmod(int(bag_time_ns), NS)
        self._clock_pub.publish(msg)
        stats.clocks += 1

    def _wait_subscribers(self, stop: threading.Event) -> None:
        if self.wait_for_subscribers <= 0:
            return
        deadline = time.monotonic() + self.wait_timeout_s
        while not stop.is_set():
            short = [t for t, p in self._topic_pubs.items()
                     if p.get_subscription_count() < self.wait_for_subscribers]
            if not short:
                return
            if time.monotonic() >= deadline:
                self.get_logger().warning(
                    f'playing anyway: after {self.wait_timeout_s:g} s, fewer than {self.wait_for_subscribers} '
                    f'subscriber(s) on {", ".join(short)}')
                return
            stop.wait(0.05)   # graph events are not exposed to rclpy; poll the matched count

    def _wait_until(self, due: float, next_bag_ns: int, pacer: Pacer, stop: threading.Event,
                    stats: PlayStats) -> bool:
        """Sleep until the wall time `due`, publishing /clock on the way; False when stopped."""
        period = 1.0 / self.clock_hz if self.clock_hz > 0 else None
        next_clock = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= due:
                return not stop.is_set()
            if period is not None and now >= next_clock:
                current = pacer.bag_time_at(now)
                if current is not None:
                    self._publish_clock(min(current, next_bag_ns), stats)
                next_clock = now + period
            wake = due if period is None else min(due, next_clock)
            # Bounded waits: a stop (Ctrl-C, shutdown) is noticed within 0.5 s even during long gaps.
            if stop.wait(min(max(wake - now, 0.0), 0.5)):
                return False

    # -- the player ---------------------------------------------------------------------------------------
    def play(self, stop: threading.Event | None = None) -> PlayStats:
        """Play the bag (once, or until stopped when looping). Blocking; call it from any thread."""
        stop = stop or threading.Event()
        stats = PlayStats({t: 0 for t in self.topics})
        self._wait_subscribers(stop)
        self._play_passes(stop, stats)
        stats.stopped_early = stop.is_set()
        self._flush()
        # After a shutdown the node's logger can no longer publish to /rosout: log without it.
        log = self.get_logger() if self.context.ok() else rclpy.logging.get_logger(self.get_name())
        log.info(f'played {stats.total} messages in {stats.passes} pass(es)'
                               f'{f", {stats.clocks} /clock" if self._clock_pub else ""}'
                               f'{" (stopped)" if stats.stopped_early else ""}')
        return stats

    def _play_passes(self, stop: threading.Event, stats: PlayStats) -> None:
        while not stop.is_set():
            pacer = Pacer(self.rate)   # re-anchored every pass, so a loop restarts at the bag's own pace
            self._last_clock = -1      # and sim time may jump back to the start of the bag
            for msg in read_raw(self.bag, self.topics):
                now = time.monotonic()
                if not self._wait_until(pacer.deadline(msg.bag_time_ns, now), msg.bag_time_ns, pacer, stop,
                                        stats):
                    return
                try:
                    self._publish_clock(msg.bag_time_ns, stats)
                    self._topic_pubs[msg.topic].publish(msg.data)
                except Exception:
                    if self.context.ok():
                        raise
                    # Shut down (SIGINT/SIGTERM) between the stop check and the publish: not an error.
                    stop.set()
                    return
                stats.published[msg.topic] += 1
            stats.passes += 1
            if not self.loop:
                return

    def _flush(self, timeout_s: float = 5.0) -> None:
        # Reliable messages still in flight when the process exits are lost; give subscribers a moment to ack.
        if not self.context.ok():
            return
        for topic, pub in self._topic_pubs.items():
            try:
                acked = pub.wait_for_all_acked(Duration(seconds=timeout_s))
            except RCLError:
                if self.context.ok():
                    raise
                return   # SIGINT shut the context down while waiting (rclpy's signal thread): nothing to flush to
            if not acked:
                self.get_logger().warning(f'{topic}: not every message acknowledged within {timeout_s:g} s')


def run(bag: str, ros_args: list[str] | None = None, **options) -> int:
    """Init rclpy, play, shut down. Exit code: 0 played (or stopped by Ctrl-C / SIGTERM), 2 bad bag or options."""
    import rclpy

    from ..nodes.process_stop import StartupInterrupted
    from ..nodes.runtime import init_ros, release, spin_each_node
    stop = init_ros(ros_args, stop_with_parent=False)
    node, executors = None, []
    try:
        try:
            node = BagPlayer(bag, **options)
        except (BagError, ValueError, OSError) as err:
            rclpy.logging.get_logger('bag_player').fatal(f'cannot play: {err}')
            return 2
        except StartupInterrupted:
            return 0
        # Spin on a side thread so the node answers parameter and graph queries while the main thread plays.
        executors = spin_each_node([node])
        stop.started()     # from here a signal sets stop.requested, which play() checks at least every 0.5 s
        node.play(stop.requested)
        return 0
    finally:
        release(stop, executors, [node] if node is not None else [])
