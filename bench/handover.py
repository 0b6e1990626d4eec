#!/usr/bin/env python3
"""In-process hand-over of an Embedding (composed mode's embedder -> memory hop): the project's intra-process
delivery (transport/intra_process.py: the message object by reference, a guard condition wakes the
subscribing node's executor) against iceoryx2's local service (ServiceType.Local: the message serialised into
a loaned sample, an event wakes a listener thread, which deserialises it) and plain rclpy DDS, same run.

    cd /tmp && python /path/to/bench/handover.py [--messages 2000] [--rate 100] [--json PATH]

Latency: publish() called -> subscriber callback entered (CLOCK_MONOTONIC), p50 / p99 per mode, ratios to
intra-process. The message is a real Embedding (384-dim vector, one region, ten detections) as the default
backend makes. Answers issue 19 part 6: whether the intra-process path should move onto iceoryx2 too.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_DOMAIN_ID', str(os.getpid() % 90 + 5))

import numpy as np  # noqa: E402

DEPTH = 256     # iceoryx2's subscriber buffer: like the deep DDS queue, no message lost to a stall


def embedding(sequence: int):
    from vidaction_ros.msg import Detection, Embedding, RegionEmbedding
    msg = Embedding(sequence=sequence, model='bench', dim=384)
    rng = np.random.default_rng(sequence)
    msg.vector = rng.standard_normal(384).astype(np.float32).tolist()
    msg.regions = [RegionEmbedding(name='near_zone', vector=rng.standard_normal(384).astype(np.float32).tolist())]
    msg.top_concepts = ['person', 'street', 'car']
    msg.detections = [Detection(label='person', confidence=0.9) for _ in range(10)]
    return msg


class Received:
    """Callback side: latency of each message by its sequence (a late callback is never charged to the next)."""

    def __init__(self, total: int, warmup: int):
        self.sent_ns = [0] * total
        self.latency_ms: list[float] = []
        self.warmup, self.total = warmup, total
        self.count = 0
        self.done = threading.Event()

    def on(self, msg) -> None:
        now = time.monotonic_ns()
        if msg.sequence >= self.warmup:
            self.latency_ms.append((now - self.sent_ns[msg.sequence]) / 1e6)
        self.count += 1
        if self.count >= self.total:
            self.done.set()


def run_mode(mode: str, n: int, period_s: float) -> dict:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from vidaction_ros import qos
    from vidaction_ros.msg import Embedding
    from vidaction_ros.transport import intra_process
    context = rclpy.Context()
    rclpy.init(context=context)
    pub_node = rclpy.create_node('handover_pub', context=context)
    sub_node = rclpy.create_node('handover_sub', context=context)
    warmup = 20                                   # not counted
    got = Received(n + warmup, warmup)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(sub_node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    closers = []
    if mode in ('intra', 'dds'):
        intra = mode == 'intra'
        # Deep queues in every mode: a latency bench must not lose messages to a stall of the loaded machine.
        sub = intra_process.subscription(sub_node, Embedding, 'bench_embedding', got.on, qos.ACTION_DEEP, intra)
        pub = intra_process.publisher(pub_node, Embedding, 'bench_embedding', qos.ACTION_DEEP, intra)
        send = pub.publish
        if not intra:
            deadline = time.monotonic() + 20
            while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
        elif hasattr(sub, 'destroy'):
            closers.append(sub.destroy)
    else:
        send, close = iox_local_pair(got.on)
        closers.append(close)
    spin.start()
    msgs = [embedding(i) for i in range(n + warmup)]    # one each: in-process subscribers get the very object
    for i, msg in enumerate(msgs):
        got.sent_ns[i] = time.monotonic_ns()
        send(msg)
        time.sleep(period_s)
    got.done.wait(10)
    for close in closers:
        close()
    executor.shutdown()
    spin.join(5)
    for node in (pub_node, sub_node):
        node.destroy_node()
    rclpy.try_shutdown(context=context)
    lat = np.array(got.latency_ms)
    return {'mode': mode, 'received': int(lat.size), 'p50_ms': float(np.percentile(lat, 50)),
            'p99_ms': float(np.percentile(lat, 99))}


def iox_local_pair(callback):
    """iceoryx2 local (in-process) publish-subscribe of serialised Embeddings, woken by a local event."""
    import ctypes
    import iceoryx2 as iox
    from rclpy.serialization import deserialize_message, serialize_message
    from vidaction_ros.msg import Embedding
    iox.set_log_level_from_env_or(iox.LogLevel.Error)
    node = iox.NodeBuilder.new().create(iox.ServiceType.Local)
    name = iox.ServiceName.new(f'bench/handover/{os.getpid()}')
    service = (node.service_builder(name).publish_subscribe(iox.Slice[ctypes.c_uint8])
               .subscriber_max_buffer_size(DEPTH).open_or_create())
    event = node.service_builder(iox.ServiceName.new(f'bench/handover/{os.getpid()}/ready')).event().open_or_create()
    publisher = service.publisher_builder().initial_max_slice_len(8192) \
        .allocation_strategy(iox.AllocationStrategy.PowerOfTwo).create()
    subscriber = service.subscriber_builder().buffer_size(DEPTH).create()
    notifier, listener = event.notifier_builder().create(), event.listener_builder().create()
    stop = threading.Event()

    def send(msg) -> None:
        data = serialize_message(msg)
        sample = publisher.loan_slice_uninit(len(data))
        ctypes.memmove(sample.payload_ptr, data, len(data))
        sample.assume_init().send()
        notifier.notify()

    def run() -> None:
        while not stop.is_set():
            if not listener.timed_wait(iox.Duration.from_secs_f64(0.2)):
                continue
            while (sample := subscriber.receive()) is not None:
                data = ctypes.string_at(sample.payload_ptr, sample.header.number_of_elements)
                sample.delete()
                callback(deserialize_message(data, Embedding))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def close() -> None:
        stop.set()
        thread.join(2)
        for port in (notifier, listener, subscriber, publisher):
            port.delete()

    return send, close


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='bench/handover.py', description=__doc__.split('\n\n')[0])
    parser.add_argument('--messages', type=int, default=2000)
    parser.add_argument('--rate', type=float, default=100.0, help='messages per second')
    parser.add_argument('--modes', default='intra,iox_local,dds')
    parser.add_argument('--json', default='')
    args = parser.parse_args(argv)
    rows = [run_mode(mode, args.messages, 1.0 / args.rate) for mode in args.modes.split(',')]
    base = next((r for r in rows if r['mode'] == 'intra'), None)
    print(f"{'mode':<10}{'received':>10}{'p50 ms':>10}{'p99 ms':>10}{'p50 / intra':>13}{'p99 / intra':>13}")
    for row in rows:
        if base:
            row['p50_vs_intra'] = row['p50_ms'] / base['p50_ms']
            row['p99_vs_intra'] = row['p99_ms'] / base['p99_ms']
        print(f"{row['mode']:<10}{row['received']:>10}{row['p50_ms']:>10.3f}{row['p99_ms']:>10.3f}"
              f"{row.get('p50_vs_intra', 0):>13.2f}{row.get('p99_vs_intra', 0):>13.2f}")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'rows': rows, 'messages': args.messages, 'rate': args.rate, 'cpus': os.cpu_count(),
                       'date': time.strftime('%Y-%m-%d'),
                       'command': 'python bench/handover.py ' + ' '.join(argv or sys.argv[1:])}, f, indent=1)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
