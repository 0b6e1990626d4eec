#!/usr/bin/env python3
"""Frame transport per-hop latency: sensor_msgs/Image through rclpy vs the shared-memory ring vs composed.

    python bench/transport.py [--frames 600] [--rate 30] [--sizes 640x480,1920x1080]
                              [--modes image,shm,shm_view,inproc] [--qos reliable|best_effort] [--json PATH]

A hop is timed from the moment the producer hands a filled bgr8 frame to the transport until the consumer's
callback holds a readable frame (CLOCK_MONOTONIC, which all processes share; the send time travels in the
header stamp). Frames: the first 30 of the bundled demo video (10 fps) scaled to each size, cycled at
--rate (30 Hz = the video played at 3x). Modes, all in the same run, with the same QoS: --qos reliable
(default: the camera's keep-last-1 frame profile, made reliable), best_effort (qos.FRAME as the live camera
uses it; Fast DDS then drops most large Image samples, so the baseline's latency describes only the few
that survive) or lockstep (qos.FRAME_LOCKSTEP, reliable depth 10: a slow consumer queues instead of drops):
  image   sensor_msgs/Image published by one process, received and decoded by another (the baseline);
  shm     FrameSender(mode='shm') in one process: pixels into the shared-memory ring, a FrameRef over DDS;
          transport.resolve() in another process copies them out;
  shm_view the same, but the consumer reads the slot in place (transport.borrow, validated after use);
  inproc  composed: producer and consumer nodes in one process, FrameRef over DDS, frame by reference.
Prints a table with ratios against the image baseline of the same size; --json writes
{"results": [{"mode", "width", "height", "p50_ms", "p99_ms", "max_ms", "delivered", "dropped", ...}], ...}.
CPU % is producer + consumer process CPU time over the measured window, as a percentage of one core.
Run it from outside the source tree after `source scripts/env.sh`: `cd /tmp && python /path/bench/transport.py`.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import queue
import resource
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')   # DDS stays on this machine
os.environ.setdefault('ROS_DOMAIN_ID', str(os.getpid() % 100 + 1))     # and off other runs' domains
os.environ.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from vidaction_ros import qos  # noqa: E402
from vidaction_ros.conversions import bgr_to_image, image_to_bgr  # noqa: E402
from vidaction_ros.frame_store import FrameLost  # noqa: E402
from vidaction_ros.msg import FrameRef  # noqa: E402
from vidaction_ros.transport import FrameSender, borrow, resolve  # noqa: E402

VIDEO = '/usr/share/doc/opencv-doc/examples/data/vtest.avi'
LABELS = {'image': 'sensor_msgs/Image (rclpy)', 'shm': 'shm ring, resolve (copy out)',
          'shm_view': 'shm ring, borrow (view)', 'inproc': 'composed (by reference)'}
WARM = 'warm'          # header.frame_id of warm-up frames; measured frames carry their index
# The camera's frame profile (qos.FRAME: keep last 1, newest wins) made reliable, so that large Image
# samples are not lost to fragment drops; 'best_effort' is qos.FRAME as is, 'lockstep' qos.FRAME_LOCKSTEP.
_RELIABLE_LATEST = copy.copy(qos.FRAME)
_RELIABLE_LATEST.reliability = ReliabilityPolicy.RELIABLE
QOS = {'reliable': _RELIABLE_LATEST, 'best_effort': qos.FRAME, 'lockstep': qos.FRAME_LOCKSTEP}


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def stamp(msg, t_ns: int, frame_id: str) -> None:
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(t_ns, 1_000_000_000)
    msg.header.frame_id = frame_id


class Recorder:
    """Consumer side: latency per measured frame, CPU over the measured window."""

    def __init__(self):
        self.latency_ms: dict[int, float] = {}
        self.lost = 0
        self.warm = 0
        self.window = None         # (cpu, wall) at the first measured frame
        self.last = None           # (cpu, wall) at the latest measured frame
        self.lock = threading.Lock()

    def record(self, msg, frame, t1_ns: int) -> None:
        sent_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            if frame is None:
                self.lost += 1
            elif msg.header.frame_id == WARM:
                self.warm += 1
            else:
                now = (cpu_s(), time.monotonic())
                self.window = self.window or now
                self.last = now
                self.latency_ms[int(msg.header.frame_id)] = (t1_ns - sent_ns) / 1e6

    def summary(self) -> dict:
        cpu = wall = 0.0
        if self.window and self.last:
            cpu, wall = self.last[0] - self.window[0], self.last[1] - self.window[1]
        return {'latency_ms': self.latency_ms, 'lost': self.lost, 'cpu_s': cpu, 'wall_s': wall}


def subscribe(node: Node, mode: str, recorder: Recorder, profile) -> None:
    if mode == 'image':
        def on_image(msg):
            frame = image_to_bgr(msg)                 # a readable bgr8 array over the received bytes
            recorder.record(msg, frame, time.monotonic_ns())
        node.create_subscription(Image, 'bench/image', on_image, profile)
    elif mode == 'shm_view':
        def on_borrowed(msg):
            t1 = time.monotonic_ns()
            try:
                with borrow(msg) as frame:            # a validated view: no copy at all
                    t1 = time.monotonic_ns()
                    int(frame[-1, -1, -1])            # readable
            except FrameLost:
                frame = None                          # overwritten while held: counted as lost
            recorder.record(msg, frame, t1)
        node.create_subscription(FrameRef, 'bench/frame', on_borrowed, profile)
    else:
        def on_ref(msg):
            try:
                frame = resolve(msg)                  # shm: one memcpy out; inproc: the very array
            except FrameLost:
                frame = None
            recorder.record(msg, frame, time.monotonic_ns())
        node.create_subscription(FrameRef, 'bench/frame', on_ref, profile)


# -- consumer process -------------------------------------------------------------------------------------
def consume(mode: str, qos_name: str) -> int:
    """Child process: subscribe, say 'ready', 'warm' after warm-up frames, print JSON after 'done'."""
    rclpy.init()
    node = Node('bench_transport_consumer')
    recorder = Recorder()
    subscribe(node, mode, recorder, QOS[qos_name])
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), done.set()), daemon=True).start()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()   # as the inproc consumer spins
    print('ready', flush=True)
    while not done.wait(0.05):
        if recorder.warm >= 20:
            print('warm', flush=True)
            break
    done.wait()
    time.sleep(1.0)                                   # stragglers still in flight get a second
    executor.shutdown()
    print(json.dumps(recorder.summary()), flush=True)
    node.destroy_node()
    rclpy.shutdown()
    return 0


class Child:
    def __init__(self, mode: str, qos_name: str):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), '--consume', mode,
                                      '--qos', qos_name],
                                     cwd=tempfile.gettempdir(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=dict(os.environ))
        self.lines = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.proc.stdout], daemon=True).start()

    def line(self, timeout: float) -> str | None:
        try:
            return self.lines.get(timeout=timeout).strip()
        except queue.Empty:
            return None


# -- producer ---------------------------------------------------------------------------------------------
def load_frames(width: int, height: int, count: int = 30) -> list[np.ndarray]:
    import cv2
    cap = cv2.VideoCapture(VIDEO)
    frames = []
    while len(frames) < count:
        ok, frame = cap.read()
        if not ok:
            break
        interp = cv2.INTER_AREA if width < frame.shape[1] else cv2.INTER_LINEAR
        frames.append(np.ascontiguousarray(cv2.resize(frame, (width, height), interpolation=interp)))
    cap.release()
    if not frames:
        raise SystemExit(f'cannot read the demo video {VIDEO} (apt-get install opencv-doc)')
    return frames


def make_send(node: Node, mode: str, width: int, height: int, qos_name: str):
    """A function (frame, t_ns, frame_id) that hands one frame to the transport, and a subscriber count."""
    if mode == 'image':
        pub = node.create_publisher(Image, 'bench/image', QOS[qos_name])

        def send(frame, t_ns, frame_id):
            msg = bgr_to_image(frame)                 # the serialisation is part of the hop's cost
            stamp(msg, t_ns, frame_id)
            pub.publish(msg)
        return send, pub.get_subscription_count, lambda: None
    sender = FrameSender(node, 'shm' if mode == 'shm_view' else mode, topic='bench/frame',
                         max_frame=(width, height), qos_profile=QOS[qos_name])

    def send(frame, t_ns, frame_id):
        msg = FrameRef()
        stamp(msg, t_ns, frame_id)
        sender.send(msg, frame)
    return send, sender.publisher.get_subscription_count, sender.close


def run_one(mode: str, frames: list[np.ndarray], count: int, rate: float, qos_name: str) -> dict:
    height, width = frames[0].shape[:2]
    context = rclpy.Context()
    rclpy.init(context=context)
    node = Node('bench_transport_producer', context=context)
    child = executor = None
    recorder = Recorder()
    send, subscribers, close = make_send(node, mode, width, height, qos_name)
    try:
        if mode == 'inproc':
            consumer = Node('bench_transport_consumer', context=context)
            subscribe(consumer, mode, recorder, QOS[qos_name])
            executor = SingleThreadedExecutor(context=context)
            executor.add_node(consumer)
            threading.Thread(target=executor.spin, daemon=True).start()
        else:
            child = Child(mode, qos_name)
            if child.line(120) != 'ready':
                raise RuntimeError(f'{mode} consumer process did not start')
        deadline = time.monotonic() + 60
        while subscribers() == 0:                     # discovery, bounded
            if time.monotonic() > deadline:
                raise RuntimeError('the consumer never matched the publisher')
            time.sleep(0.05)
        # Warm-up at the rate until the consumer has had 20 frames: the first resolve opens the ring, and the
        # ring's 8 slots take their first-touch page faults (tmpfs is sparse), which is start-up cost.
        deadline = time.monotonic() + 60
        i = 0
        while True:
            send(frames[i % len(frames)], time.monotonic_ns(), WARM)
            i += 1
            time.sleep(1.0 / rate)
            if (recorder.warm >= 20) if child is None else (child.line(0) == 'warm'):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f'{mode}: no warm-up frame reached the consumer in 60 s')
        cpu0, start = cpu_s(), time.monotonic()
        for k in range(count):
            target = start + k / rate
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            send(frames[k % len(frames)], time.monotonic_ns(), str(k))
        producer_cpu, producer_wall = cpu_s() - cpu0, time.monotonic() - start
        if child is not None:
            child.proc.stdin.write('done\n')
            child.proc.stdin.flush()
            line = None
            while line is None or not line.startswith('{'):
                line = child.line(120)
                if line is None:
                    raise RuntimeError(f'{mode} consumer process gave no result')
            summary = json.loads(line)
            summary['latency_ms'] = {int(k): v for k, v in summary['latency_ms'].items()}
            child.proc.wait(60)
            consumer_cpu_pct = 100.0 * summary['cpu_s'] / summary['wall_s'] if summary['wall_s'] else 0.0
        else:
            time.sleep(1.0)                           # stragglers
            summary = recorder.summary()
            consumer_cpu_pct = 0.0                    # one process: producer CPU covers both
    finally:
        if executor is not None:
            executor.shutdown()
        if child is not None and child.proc.poll() is None:
            child.proc.kill()
        close()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    lat = np.array([summary['latency_ms'][k] for k in sorted(summary['latency_ms'])], dtype=np.float64)
    delivered = int(lat.size)
    return {'mode': mode, 'label': LABELS[mode], 'width': width, 'height': height, 'rate_hz': rate, 'qos': qos_name,
            'sent': count, 'delivered': delivered, 'dropped': count - delivered, 'lost_frames': summary['lost'],
            'p50_ms': float(np.percentile(lat, 50)) if delivered else float('nan'),
            'p99_ms': float(np.percentile(lat, 99)) if delivered else float('nan'),
            'max_ms': float(lat.max()) if delivered else float('nan'),
            'mean_ms': float(lat.mean()) if delivered else float('nan'),
            'cpu_percent': 100.0 * producer_cpu / producer_wall + consumer_cpu_pct}


def table(results: list[dict]) -> str:
    head = (f"{'size':<10}{'transport':<29}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'p50 x':>8}{'p99 x':>8}"
            f"{'deliv':>7}{'drop':>6}{'cpu %':>7}")
    lines = [head, '-' * len(head)]
    for r in results:
        base = next((b for b in results if b['mode'] == 'image' and b['width'] == r['width']
                     and b['height'] == r['height']), None)
        x50 = f"{base['p50_ms'] / r['p50_ms']:.1f}" if base and r['p50_ms'] > 0 else '-'
        x99 = f"{base['p99_ms'] / r['p99_ms']:.1f}" if base and r['p99_ms'] > 0 else '-'
        r['x_p50_vs_image'], r['x_p99_vs_image'] = (float(x50) if x50 != '-' else None,
                                                    float(x99) if x99 != '-' else None)
        lines.append(f"{r['width']}x{r['height']:<6}{r['label']:<29}{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}"
                     f"{r['max_ms']:>9.3f}{x50:>8}{x99:>8}{r['delivered']:>7}{r['dropped']:>6}"
                     f"{r['cpu_percent']:>7.0f}")
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser('bench/transport.py', description=__doc__.split('\n')[0])
    parser.add_argument('--frames', type=int, default=600, help='measured frames per mode and size')
    parser.add_argument('--rate', type=float, default=30.0, help='frames per second the producer hands over')
    parser.add_argument('--sizes', default='640x480,1920x1080', help='comma-separated WxH list')
    parser.add_argument('--modes', default='image,shm,shm_view,inproc', help='comma-separated subset of '
                        + ','.join(LABELS))
    parser.add_argument('--qos', default='reliable', choices=sorted(QOS), help='QoS of every mode')
    parser.add_argument('--json', default='', help='write the results here')
    parser.add_argument('--consume', default='', help=argparse.SUPPRESS)   # internal: the consumer process
    args = parser.parse_args(argv)
    if args.consume:
        return consume(args.consume, args.qos)
    modes = [m for m in args.modes.split(',') if m]
    unknown = set(modes) - set(LABELS)
    if unknown:
        parser.error(f'unknown modes {sorted(unknown)}; choose from {list(LABELS)}')
    results = []
    for size in args.sizes.split(','):
        width, height = (int(v) for v in size.lower().split('x'))
        frames = load_frames(width, height)
        for mode in modes:
            print(f'[bench] {mode} {width}x{height}: {args.frames} frames at {args.rate} Hz ...',
                  file=sys.stderr, flush=True)
            results.append(run_one(mode, frames, args.frames, args.rate, args.qos))
        del frames
    print(table(results))
    print(f"(p50 x / p99 x: image-baseline latency divided by this row's, same size, same run; "
          f"{args.frames} frames at {args.rate:g} Hz; QoS {args.qos}; {os.cpu_count()} CPUs; "
          f"{os.environ['RMW_IMPLEMENTATION']})")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'results': results, 'frames': args.frames, 'rate_hz': args.rate, 'qos': args.qos,
                       'cpus': os.cpu_count(), 'machine': platform.machine(), 'python': platform.python_version(),
                       'rmw': os.environ['RMW_IMPLEMENTATION'],
                       'command': 'python bench/transport.py ' + ' '.join(argv if argv is not None
                                                                          else sys.argv[1:])}, f, indent=2)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
