"""Helpers for the bag tests: the bag player as a child process group, and a subscriber that records every
message of chosen topics. Waiting is on conditions with generous timeouts, never on sleeps."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

REPLAY_BAG = Path(__file__).resolve().parent.parent / 'data' / 'vtest_replay'


class TopicCollector:
    """A node on its own executor thread recording (topic, message) for each subscription, in arrival order.

    subscriptions: {topic: (message class, QoS profile)}.
    """

    def __init__(self, subscriptions: dict, context=None, name: str = 'test_topic_collector'):
        self.received: list[tuple[str, object]] = []
        self.changed = threading.Condition()
        self.node = Node(name, context=context)
        for topic, (cls, qos) in subscriptions.items():
            self.node.create_subscription(cls, topic, lambda msg, t=topic: self._on_message(t, msg), qos)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_message(self, topic, msg):
        with self.changed:
            self.received.append((topic, msg))
            self.changed.notify_all()

    def messages(self, topic: str) -> list:
        with self.changed:
            return [m for t, m in self.received if t == topic]

    def wait_for(self, predicate, timeout: float) -> bool:
        """Wait until predicate(self) holds; False on timeout."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                # predicate may call self.messages(), which takes the (re-entrant) condition lock
                if predicate(self):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(min(left, 1.0))

    def close(self):
        self.executor.shutdown()
        self.thread.join(10.0)
        self.node.destroy_node()


def start_player(bag: str, *args: str, log_path: str | None = None) -> subprocess.Popen:
    """`vidaction-bag play BAG ARGS` as a child process group, run outside the source tree."""
    out = open(log_path, 'w') if log_path else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, '-m', 'vidaction_ros.tools.bag_cli', 'play', str(bag), *args],
                            cwd=tempfile.gettempdir(), stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True, env=dict(os.environ))
