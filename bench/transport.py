#!/usr/bin/env python3
"""Frame transport per-hop latency: sensor_msgs/Image through rclpy vs iceoryx2 vs composed.

    python bench/transport.py [--frames 600] [--rate 30] [--sizes 640x480,1920x1080]
                              [--modes image,inproc,inproc_direct,inproc_inline,iox_loan,iox_loan_view]
                              [--qos reliable|best_effort|lockstep] [--dispatch thread|executor] [--json PATH]

A hop is timed from the moment the producer hands a filled bgr8 frame to the transport until the consumer's
callback holds a readable frame (CLOCK_MONOTONIC, which all processes share; the send time travels in the
header stamp). Frames: the first 30 of the bundled demo video (10 fps) scaled to each size, cycled at
--rate (30 Hz = the video played at 3x). Modes, all in the same run, with the same QoS: --qos reliable
(default: the camera's keep-last-1 frame profile, made reliable), best_effort (qos.FRAME as the live camera
uses it; Fast DDS then drops most large Image samples, so the baseline's latency describes only the few
that survive) or lockstep (qos.FRAME_LOCKSTEP, reliable depth 10: a slow consumer queues instead of drops):
  image          sensor_msgs/Image published by one process, received and decoded by another (the baseline);
  inproc         composed: producer and consumer nodes in one process, FrameRef over DDS (direct hand-off
                 off), frame by reference (transport.resolve gives the producer's very array);
  inproc_direct  composed, with a FrameSubscription: the FrameRef handed over in-process to the
                 subscription's thread (or executor, --dispatch executor), DDS duplicate dropped;
  inproc_inline  the same with dispatch='inline': the callback runs on the producer's thread (send returns
                 after it), no thread hand-off;
  iox_loan / iox_loan_view  transport iox, two processes: the producer fills a loaned iceoryx2 sample in
                 place (FrameSender.loan; the fill is not part of the hop: the hop starts at send_loaned,
                 when the filled frame is handed over), the consumer's FrameSubscription is woken by an
                 iceoryx2 event and takes the sample (no DDS on the hop; the FrameRef on DDS is ignored
                 there), then copies it out (transport.resolve) / reads it in place (transport.borrow; the
                 sample is held until the callback returns, so it cannot be overwritten while read).
  --dispatch says where FrameSubscription runs the callback in inproc_direct and the iox modes (its own
  thread, or the executor).
The shared-memory ring rows (shm, shm_view, shm_loan_bell, shm_loan_bell_view) were removed with the ring and
its Unix-socket doorbell (replaced by iceoryx2); their last measured figures are in docs/transport.md.
The FrameSubscription modes also report where the time goes (JSON "breakdown", printed below the table), in
hop order: handoff (from the hand-off until the subscription has the frame: in-process, the sender queueing
it; iox, send + event + wake-up + taking the sample and rebuilding its FrameRef), queue (from there until the
dispatcher takes it: thread wake-up for in-process hand-offs), copy (the in-process FrameRef's private copy,
until the callback is called; iox: bookkeeping only, its FrameRef was rebuilt in handoff), read (resolve's
copy-out or borrow's view, in the callback; also the inproc row). fill is the producer's memcpy into the
loaned sample, outside the hop (the camera's cv2.resize into the sample replaces it).
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
from vidaction_ros.ingest.frame_source import demo_frames  # noqa: E402
from vidaction_ros.conversions import bgr_to_image, image_to_bgr  # noqa: E402
from vidaction_ros.transport.frame_store import FrameLost  # noqa: E402
from vidaction_ros.msg import FrameRef  # noqa: E402
from vidaction_ros.transport.frame_transport import FrameSender, FrameSubscription, borrow, resolve  # noqa: E402

LABELS = {'image': 'sensor_msgs/Image (rclpy)',
          'inproc': 'composed (by reference)', 'inproc_direct': 'composed, direct hand-off',
          'inproc_inline': 'composed, inline call',
          'iox_loan': 'iceoryx2 loan+event, resolve', 'iox_loan_view': 'iceoryx2 loan+event, borrow'}
TRANSPORT = {'inproc': 'inproc', 'inproc_direct': 'inproc', 'inproc_inline': 'inproc',
             'iox_loan': 'iox', 'iox_loan_view': 'iox'}       # FrameSender mode of each FrameRef mode
DIRECT_MODES = ('inproc_direct', 'inproc_inline', 'iox_loan', 'iox_loan_view')   # through a FrameSubscription
LOANED = ('iox_loan', 'iox_loan_view')
VIEWED = ('iox_loan_view',)
COMPOSED = ('inproc', 'inproc_direct', 'inproc_inline')
REMOVED = {'shm': 'removed with the shm ring', 'shm_view': 'removed with the shm ring',
           'shm_loan_bell': 'removed with the shm ring', 'shm_loan_bell_view': 'removed with the shm ring',
           'inproc_bell': 'renamed inproc_direct'}
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
        self.read_ms: list[float] = []   # resolve / borrow time of measured frames
        self.subscription = None   # FrameSubscription of the direct modes
        self.lock = threading.Lock()

    def record(self, msg, frame, t1_ns: int, t0_ns: int = 0) -> None:
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
                if t0_ns:
                    self.read_ms.append((t1_ns - t0_ns) / 1e6)

    def summary(self) -> dict:
        cpu = wall = 0.0
        if self.window and self.last:
            cpu, wall = self.last[0] - self.window[0], self.last[1] - self.window[1]
        out = {'latency_ms': self.latency_ms, 'lost': self.lost, 'cpu_s': cpu, 'wall_s': wall,
               'breakdown': {}}
        if self.read_ms:
            out['breakdown']['read'] = pct(self.read_ms)
        sub = self.subscription
        if sub is not None:
            measured = len(self.latency_ms)
            trace = [t for t in list(sub.trace or [])[-measured:] if t[0] != 'dds'] if measured else []
            # (path, stamp, received, taken, dispatched): see FrameSubscription.trace
            parts = out['breakdown']
            if trace:
                read = parts.pop('read', None)          # hop order: handoff, queue, copy, read
                parts['handoff'] = pct([(rx - t0) / 1e6 for _, t0, rx, _, _ in trace])
                parts['queue'] = pct([(tk - rx) / 1e6 for _, _, rx, tk, _ in trace])
                parts['copy'] = pct([(go - tk) / 1e6 for _, _, _, tk, go in trace])
                if read:
                    parts['read'] = read
            parts['paths'] = sub.stats()
        return out


def pct(values_ms) -> dict:
    """p50 / p99 / max of a list of milliseconds."""
    a = np.asarray(values_ms, dtype=np.float64)
    if not a.size:
        return {}
    return {'p50_ms': float(np.percentile(a, 50)), 'p99_ms': float(np.percentile(a, 99)),
            'max_ms': float(a.max()), 'n': int(a.size)}


def subscribe(node: Node, mode: str, recorder: Recorder, profile, dispatch: str = 'thread') -> None:
    if mode in DIRECT_MODES:
        view = mode in VIEWED

        def on_frame(msg):
            t0 = time.monotonic_ns()
            try:
                if view:
                    with borrow(msg) as frame:        # the held sample in place: no copy at all
                        int(frame[-1, -1, -1])
                else:
                    frame = resolve(msg)              # iox: one memcpy out; inproc: the very array
            except FrameLost:
                frame = None
            recorder.record(msg, frame, time.monotonic_ns(), t0)
        recorder.subscription = FrameSubscription(node, 'bench/frame', on_frame, profile, trace=True,
                                                  dispatch='inline' if mode == 'inproc_inline' else dispatch)
    elif mode == 'image':
        def on_image(msg):
            frame = image_to_bgr(msg)                 # a readable bgr8 array over the received bytes
            recorder.record(msg, frame, time.monotonic_ns())
        node.create_subscription(Image, 'bench/image', on_image, profile)
    else:
        def on_ref(msg):
            t0 = time.monotonic_ns()
            try:
                frame = resolve(msg)                  # inproc: the very array
            except FrameLost:
                frame = None
            recorder.record(msg, frame, time.monotonic_ns(), t0)
        node.create_subscription(FrameRef, 'bench/frame', on_ref, profile)


# -- consumer process -------------------------------------------------------------------------------------
def consume(mode: str, qos_name: str, dispatch: str) -> int:
    """Child process: subscribe, say 'ready', 'warm' after warm-up frames, print JSON after 'done'."""
    rclpy.init()
    node = Node('bench_transport_consumer')
    recorder = Recorder()
    subscribe(node, mode, recorder, QOS[qos_name], dispatch)
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
    if recorder.subscription is not None:
        recorder.subscription.destroy()
    node.destroy_node()
    rclpy.shutdown()
    return 0


class Child:
    def __init__(self, mode: str, qos_name: str, dispatch: str):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), '--consume', mode,
                                      '--qos', qos_name, '--dispatch', dispatch],
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
def make_send(node: Node, mode: str, width: int, height: int, qos_name: str, fill_ms: list):
    """A function (frame, frame_id) that hands one frame to the transport (stamped with the hand-off time),
    a subscriber count, and a close."""
    if mode == 'image':
        pub = node.create_publisher(Image, 'bench/image', QOS[qos_name])

        def send(frame, frame_id):
            t_ns = time.monotonic_ns()
            msg = bgr_to_image(frame)                 # the serialisation is part of the hop's cost
            stamp(msg, t_ns, frame_id)
            pub.publish(msg)
        return send, pub.get_subscription_count, lambda: None
    # The DDS-only mode (inproc) stays DDS-only (direct hand-off off): it measures the FrameRef over DDS.
    sender = FrameSender(node, TRANSPORT[mode], topic='bench/frame', max_frame=(width, height),
                         qos_profile=QOS[qos_name], direct=mode in DIRECT_MODES)
    loaned = mode in LOANED

    def send(frame, frame_id):
        msg = FrameRef()
        if loaned:
            t_fill = time.monotonic_ns()
            view = sender.loan(height, width)         # the sample itself: the producer renders into it
            np.copyto(view, frame)                    # (the camera: cv2.resize(src, (w, h), dst=view))
            t_ns = time.monotonic_ns()                # hand-off of the filled frame: the hop starts
            fill_ms.append((t_ns - t_fill) / 1e6)
            stamp(msg, t_ns, frame_id)
            sender.send_loaned(msg, view)
        else:
            stamp(msg, time.monotonic_ns(), frame_id)
            sender.send(msg, frame)
    return send, sender.publisher.get_subscription_count, sender.close


def run_one(mode: str, frames: list[np.ndarray], count: int, rate: float, qos_name: str,
            dispatch: str = 'thread') -> dict:
    height, width = frames[0].shape[:2]
    context = rclpy.Context()
    rclpy.init(context=context)
    node = Node('bench_transport_producer', context=context)
    child = executor = None
    recorder = Recorder()
    fill_ms: list[float] = []
    send, subscribers, close = make_send(node, mode, width, height, qos_name, fill_ms)
    try:
        if mode in COMPOSED:
            consumer = Node('bench_transport_consumer', context=context)
            subscribe(consumer, mode, recorder, QOS[qos_name], dispatch)
            executor = SingleThreadedExecutor(context=context)
            executor.add_node(consumer)
            threading.Thread(target=executor.spin, daemon=True).start()
        else:
            child = Child(mode, qos_name, dispatch)
            if child.line(120) != 'ready':
                raise RuntimeError(f'{mode} consumer process did not start')
        deadline = time.monotonic() + 60
        while subscribers() == 0:                     # discovery, bounded
            if time.monotonic() > deadline:
                raise RuntimeError('the consumer never matched the publisher')
            time.sleep(0.05)
        # Warm-up at the rate until the consumer has had 20 frames: the consumer's iceoryx2 reader opens once the
        # service exists, and the sample pool's chunks take their first-touch page faults: start-up cost.
        deadline = time.monotonic() + 60
        i = 0
        while True:
            send(frames[i % len(frames)], WARM)
            i += 1
            time.sleep(1.0 / rate)
            if (recorder.warm >= 20) if child is None else (child.line(0) == 'warm'):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f'{mode}: no warm-up frame reached the consumer in 60 s')
        cpu0, start = cpu_s(), time.monotonic()
        fill_ms.clear()
        for k in range(count):
            target = start + k / rate
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            send(frames[k % len(frames)], str(k))
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
        if recorder.subscription is not None:
            recorder.subscription.destroy()
        if child is not None and child.proc.poll() is None:
            child.proc.kill()
        close()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    lat = np.array([summary['latency_ms'][k] for k in sorted(summary['latency_ms'])], dtype=np.float64)
    delivered = int(lat.size)
    breakdown = summary.get('breakdown', {})
    if fill_ms:
        breakdown['fill'] = pct(fill_ms)
    return {'mode': mode, 'label': LABELS[mode], 'width': width, 'height': height, 'rate_hz': rate, 'qos': qos_name,
            'dispatch': ('inline' if mode == 'inproc_inline' else dispatch) if mode in DIRECT_MODES else 'executor',
            'breakdown': breakdown,
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
    parts = [r for r in results if r.get('breakdown')]
    if parts:
        lines += ['', "where the time goes (p50/p99 ms; fill is the producer's memcpy into the loan, outside the hop):"]
        for r in parts:
            pieces = [f"{name} {v['p50_ms']:.3f}/{v['p99_ms']:.3f}" for name, v in r['breakdown'].items()
                      if isinstance(v, dict) and 'p50_ms' in v]
            paths = r['breakdown'].get('paths')
            if paths:
                shown = ('local', 'iox', 'dds', 'duplicates', 'stale', 'overflow', 'errors', 'iox_early',
                         'iox_dropped')
                pieces.append('paths ' + ' '.join(f'{k}={paths[k]}' for k in shown if paths.get(k)))
            lines.append(f"  {r['width']}x{r['height']:<6}{r['label']:<29}" + '  '.join(pieces))
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser('bench/transport.py', description=__doc__.split('\n')[0])
    parser.add_argument('--frames', type=int, default=600, help='measured frames per mode and size')
    parser.add_argument('--rate', type=float, default=30.0, help='frames per second the producer hands over')
    parser.add_argument('--sizes', default='640x480,1920x1080', help='comma-separated WxH list')
    parser.add_argument('--modes', default=','.join(LABELS), help='comma-separated subset of ' + ','.join(LABELS))
    parser.add_argument('--qos', default='reliable', choices=sorted(QOS), help='QoS of every mode')
    parser.add_argument('--dispatch', default='thread', choices=('thread', 'executor'),
                        help='where FrameSubscription runs the callback in the direct modes (but inproc_inline)')
    parser.add_argument('--json', default='', help='write the results here')
    parser.add_argument('--consume', default='', help=argparse.SUPPRESS)   # internal: the consumer process
    args = parser.parse_args(argv)
    if args.consume:
        # Everything is released by then; ending here keeps rclpy's C++ teardown at interpreter exit from
        # aborting the child ("terminate called without an active exception"; see runtime.exit_process).
        from vidaction_ros.nodes.runtime import exit_process
        exit_process(consume(args.consume, args.qos, args.dispatch))
    modes = [m for m in args.modes.split(',') if m]
    unknown = set(modes) - set(LABELS)
    gone = sorted(unknown & set(REMOVED))
    if gone:
        parser.error('; '.join(f'mode {m} was {REMOVED[m]}' for m in gone) + f'; choose from {list(LABELS)}')
    if unknown:
        parser.error(f'unknown modes {sorted(unknown)}; choose from {list(LABELS)}')
    results = []
    for size in args.sizes.split(','):
        width, height = (int(v) for v in size.lower().split('x'))
        frames = demo_frames(width, height)
        for mode in modes:
            print(f'[bench] {mode} {width}x{height}: {args.frames} frames at {args.rate} Hz ...',
                  file=sys.stderr, flush=True)
            results.append(run_one(mode, frames, args.frames, args.rate, args.qos, args.dispatch))
        del frames
    print(table(results))
    print(f"(p50 x / p99 x: image-baseline latency divided by this row's, same size, same run; "
          f"{args.frames} frames at {args.rate:g} Hz; QoS {args.qos}; direct dispatch {args.dispatch}; "
          f"{os.cpu_count()} CPUs; "
          f"{os.environ['RMW_IMPLEMENTATION']})")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'results': results, 'frames': args.frames, 'rate_hz': args.rate, 'qos': args.qos,
                       'dispatch': args.dispatch,
                       'cpus': os.cpu_count(), 'machine': platform.machine(), 'python': platform.python_version(),
                       'rmw': os.environ['RMW_IMPLEMENTATION'],
                       'command': 'python bench/transport.py ' + ' '.join(argv if argv is not None
                                                                          else sys.argv[1:])}, f, indent=2)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
