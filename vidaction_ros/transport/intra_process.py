"""Intra-process delivery for the hot-path topics in composed mode (`embedding`, `memory/context`), as rclcpp's
intra-process communication does for C++: a message goes from node to node in one process by reference — no
serialisation, each message once — and the DDS copy goes out only for subscribers outside the set (rviz, bags,
the eval recorder, other processes), after the in-process hand-over, so it is off the hot path.

    publisher side   IntraProcessPublisher.publish(msg): hand `msg` to every in-process subscription of the
                     topic (each queues it and wakes its node's executor), then publish on DDS only when DDS
                     has a matched subscription (nobody outside listening: no serialisation at all)
    subscriber side  IntraProcessSubscription: a keep-last queue (the QoS depth) and a guard condition of the
                     subscribing node; the callback runs on that node's own executor thread, as a DDS
                     subscription's would; or, inline, on the publisher's thread when the subscribing node's
                     callback lock is free (no executor wake-up: a few hundred microseconds per hop on 2
                     cores), else queued as before. The node's other callbacks take the same lock, so they
                     never run concurrently with an inline one

In composed mode the hot-path subscribers use only this path (no DDS subscription of their own), so a message
is never delivered twice. A receiver must treat the message as shared and read-only, except for the fields it
is documented to add (the memory stamps `times.memory_end` on the embedding it forwards).
"""
from __future__ import annotations

import threading
from collections import deque

_lock = threading.Lock()
_subscriptions: dict[str, list['IntraProcessSubscription']] = {}


def _topic_name(node, topic: str) -> str:
    return node.resolve_topic_name(topic)


def subscriber_count(node, topic: str) -> int:
    """Subscriptions of `topic` in this process that receive by reference: they are not DDS subscriptions, so
    `node.count_subscribers` does not see them (the lock-step camera asks both before it starts)."""
    with _lock:
        return len(_subscriptions.get(_topic_name(node, topic), ()))


class IntraProcessSubscription:
    def __init__(self, node, topic: str, callback, depth: int, inline_lock=None):
        """inline_lock: the subscribing node's callback lock: messages are handled on the publisher's thread
        whenever it is free (non-blocking acquire: a publisher never waits for a busy node)."""
        self.node = node
        self.topic = _topic_name(node, topic)
        self.callback = callback
        self.lock = inline_lock
        self.inline = 0                             # handled on the publisher's thread
        self.queue: deque = deque(maxlen=depth)     # keep-last, like the QoS it replaces
        self.dropped = 0                            # overwritten before the executor got to them
        self._queue_lock = threading.Lock()
        self.guard = node.create_guard_condition(self._drain)
        with _lock:
            _subscriptions.setdefault(self.topic, []).append(self)

    def push(self, msg) -> None:
        with self._queue_lock:
            if len(self.queue) == self.queue.maxlen:
                self.dropped += 1
            self.queue.append(msg)
        if self.lock is not None and self.lock.acquire(blocking=False):
            try:
                self.inline += self._drain_locked(inline=True)
            finally:
                self.lock.release()
            with self._queue_lock:
                if not self.queue:
                    return
        self.guard.trigger()                        # queued: the node's executor takes it

    def _drain(self) -> None:
        if self.lock is None:
            self._drain_locked()
            return
        with self.lock:
            self._drain_locked()

    def _drain_locked(self, inline: bool = False) -> int:
        handled = 0
        while True:
            with self._queue_lock:
                if not self.queue:
                    return handled
                msg = self.queue.popleft()
            if not inline:
                self.callback(msg)
            else:
                # On the publisher's thread: the sender must not fail for the receiver, so say it here.
                try:
                    self.callback(msg)
                except Exception as err:        # noqa: BLE001
                    self.node.get_logger().error(f'{self.topic}: callback raised: {err!r}', throttle_duration_sec=5.0)
            handled += 1

    def destroy(self) -> None:
        with _lock:
            subs = _subscriptions.get(self.topic, [])
            if self in subs:
                subs.remove(self)
        self.node.destroy_guard_condition(self.guard)


class IntraProcessPublisher:
    def __init__(self, node, msg_type, topic: str, qos):
        self.dds = node.create_publisher(msg_type, topic, qos)
        self.node = node
        self.topic = _topic_name(node, topic)
        self.delivered = 0          # in-process hand-overs
        self.dds_copies = 0         # serialised for subscribers outside

    @property
    def topic_name(self) -> str:
        return self.dds.topic_name

    def publish(self, msg) -> None:
        with _lock:
            subs = list(_subscriptions.get(self.topic, ()))
        for sub in subs:
            sub.push(msg)
        self.delivered += len(subs)
        if self.dds.get_subscription_count() > 0:
            self.dds.publish(msg)
            self.dds_copies += 1

    def destroy(self) -> None:
        self.node.destroy_publisher(self.dds)


def publisher(node, msg_type, topic: str, qos, intra_process: bool):
    """A DDS publisher, or with intra_process an IntraProcessPublisher (same publish())."""
    return IntraProcessPublisher(node, msg_type, topic, qos) if intra_process else \
        node.create_publisher(msg_type, topic, qos)


def subscription(node, msg_type, topic: str, callback, qos, intra_process: bool, inline_lock=None):
    """A DDS subscription, or with intra_process an in-process one (keep-last qos.depth; inline_lock: see
    IntraProcessSubscription)."""
    return IntraProcessSubscription(node, topic, callback, qos.depth, inline_lock) if intra_process else \
        node.create_subscription(msg_type, topic, callback, qos)
