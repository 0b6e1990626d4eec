#!/usr/bin/env python3
"""Soak and overload: the whole pipeline at 30 fps for N minutes, then once at 3x that input rate.

    python bench/soak.py [--minutes 10] [--mode processes|composed] [--json PATH] [--set node.param=value ...]

Input: the demo video, re-timed without re-encoding (the AVI header's frame rate is rewritten in a temporary
copy), so the camera's realtime pacing delivers --fps (30) frames per second, looped; the reasoning rate
(camera.rate_hz) is the same and the scene gate is off, so every captured frame is offered to the embedder
and the load is the same all run long. Whatever the embedder cannot take is dropped by the newest-wins frame
queue and counted (embedder `dropped`, /diagnostics).

Soak phase: the clock starts at the first Action. Every --sample-s (10 s; at most 1/6 of a short run) the
pipeline's processes (the pipeline process and its descendants, found through /proc) are sampled: RSS sum,
open fds (/proc/PID/fd), threads, and shared-memory segments (distinct /dev/shm files they map: the frame
ring and the DDS shared-memory transport's segments); latency is Action.capture_to_decide_ms of every Action
this script's own rclpy node receives (watchdog failsafes are counted, not timed).

  window_s   min(60, duration / 3): "first/last minute" below are the first/last window_s of the soak
             (first/last third of a run shorter than 3 minutes). The first window is also the warm-up:
             rss_mb_start, fds_start and shm_start are taken from the first sample at or after it.
  targets    RSS growth after warm-up < 5 %; fds and shm segments flat (end == start); p99 of the last
             window <= 1.2 x p99 of the first (one-sided: a faster end is fine); no shm left after stop
             (the pipeline's ring, and every DDS segment its processes mapped that this script does not map
             itself; Fast DDS's per-domain port mailboxes fastrtps_port<N> persist by design and are only
             listed, as dds_port_segments_left); pipeline exit code 0 after SIGINT.

Overload phase (--overload-s, default duration / 5 within 15..120 s; 0 skips it): a fresh pipeline fed at
--overload-factor x fps (90) with rate_hz raised to match, i.e. at least 3x the sustainable rate (the
decision rate measured in the soak). Targets: no process dies, drops are counted (> 0), p99 latency stays
within --overload-p99-factor (2) x the soak's p99, clean stop, no shm left.

The pipeline is stopped with SIGINT to its process group (started with start_new_session=True); processes
mode forwards it to its children, each in its own group. --json writes
{"minutes", "window_s", "rss_mb_start", "rss_mb_end", "fds_start", "fds_end", "shm_start", "shm_end",
 "threads_start", "threads_end", "p50_ms_first_min", "p99_ms_first_min", "p50_ms_last_min", "p99_ms_last_min",
 "actions", "decisions_per_s", "dropped", "drops": {...}, "shm_leftovers", "exit_code", "targets": {name: bool},
 "samples": [...], "overload": {...} | null, "pass": bool}.
Exit status 0 when every target passed, 1 otherwise. Run it from outside the source tree with scripts/env.sh
sourced (the installed package is imported), e.g. `cd /tmp && nice python /path/bench/soak.py --minutes 3`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_DOMAIN_ID', str(os.getpid() % 90 + 5))

DEFAULT_VIDEO = '/usr/share/doc/opencv-doc/examples/data/vtest.avi'
SHM_DIR = '/dev/shm'
RING_PREFIX = 'vidaction'          # transport.FrameSender: ring_name('vidaction', node name) + '_<pid>_<n>'
DDS_PORT_PREFIX = 'fastrtps_port'  # Fast DDS shared-memory port mailboxes: shared per domain, persistent
STARTUP_TIMEOUT_S = 240.0          # model loading on a loaded 2-core machine
STOP_TIMEOUT_S = 30.0
RSS_GROWTH_MAX = 0.05
P99_RATIO_MAX = 1.20


# -- input -------------------------------------------------------------------------------------------------
def retimed_video(src: str, fps: float, out_dir: str) -> str:
    """A copy of an AVI whose headers say `fps`: same frames, no re-encoding, so the camera's realtime
    pacing plays it that fast. Falls back to re-encoding (MJPG) for files whose header is not the classic
    avih/strh layout."""
    import cv2
    dst = os.path.join(out_dir, f'input_{fps:g}fps.avi')
    with open(src, 'rb') as f:
        data = bytearray(f.read())
    avih, strh = data.find(b'avih'), data.find(b'strh')
    if 0 <= avih < 4096 and 0 <= strh < 4096 and data[strh + 8:strh + 12] == b'vids':
        scale = struct.unpack_from('<I', data, strh + 28)[0] or 1
        struct.pack_into('<I', data, avih + 8, int(round(1e6 / fps)))        # dwMicroSecPerFrame
        struct.pack_into('<I', data, strh + 32, int(round(fps * scale)))      # dwRate (fps = rate / scale)
        with open(dst, 'wb') as f:
            f.write(data)
        cap = cv2.VideoCapture(dst)
        got = cap.get(cv2.CAP_PROP_FPS)
        cap.release()
        if abs(got - fps) < 0.01 * fps:
            return dst
    cap = cv2.VideoCapture(src)
    writer = None
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if writer is None:
            writer = cv2.VideoWriter(dst, cv2.VideoWriter_fourcc(*'MJPG'), fps, (frame.shape[1], frame.shape[0]))
        writer.write(frame)
    cap.release()
    if writer is None:
        raise SystemExit(f'soak: cannot read {src}')
    writer.release()
    return dst


# -- process metrics (/proc) ---------------------------------------------------------------------------------
def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat') as f:
                raw = f.read()
        except OSError:
            continue
        ppid = int(raw[raw.rfind(')') + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(root: int) -> list[int]:
    """root and every process below it (processes-mode children have their own sessions, not our group)."""
    children = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if os.path.exists(f'/proc/{pid}'):
            out.append(pid)
            todo.extend(children.get(pid, []))
    return sorted(out)


def shm_mapped(pid: int | str) -> set[str]:
    """Names of the /dev/shm files a process maps."""
    names = set()
    try:
        with open(f'/proc/{pid}/maps') as f:
            for line in f:
                at = line.find(SHM_DIR + '/')
                if at >= 0:
                    names.add(line[at + len(SHM_DIR) + 1:].rstrip('\n').removesuffix(' (deleted)'))
    except OSError:
        pass
    return names


def process_sample(pids: list[int]) -> dict:
    rss_kb = threads = fds = 0
    shm: set[str] = set()
    alive = []
    for pid in pids:
        try:
            with open(f'/proc/{pid}/status') as f:
                for line in f:
                    if line.startswith('VmRSS:'):
                        rss_kb += int(line.split()[1])
                    elif line.startswith('Threads:'):
                        threads += int(line.split()[1])
            fds += len(os.listdir(f'/proc/{pid}/fd'))
        except OSError:
            continue        # gone: the caller notices through the process count
        shm |= shm_mapped(pid)
        alive.append(pid)
    return {'processes': len(alive), 'rss_mb': rss_kb / 1024.0, 'fds': fds, 'threads': threads,
            'shm': len(shm), 'shm_names': sorted(shm)}


def ring_segments(pids) -> list[str]:
    """The frame rings of this pipeline in /dev/shm (their names carry the camera's pid)."""
    tags = {f'_{pid}_' for pid in pids}
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        return []
    return sorted(e for e in entries if e.lstrip('.').startswith(RING_PREFIX) and any(t in e for t in tags))


# -- statistics ----------------------------------------------------------------------------------------------
def percentile(values, q: float) -> float:
    """Linear-interpolated percentile (numpy's default); NaN for no values."""
    xs = sorted(values)
    if not xs:
        return float('nan')
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _num(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


# -- the listening node --------------------------------------------------------------------------------------
class Monitor:
    """This script's own rclpy node: every Action (arrival time, latency, trigger) and the newest
    /diagnostics values of every vidaction node."""

    def __init__(self):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from vidaction_ros import qos
        from vidaction_ros.msg import Action
        self.lock = threading.Lock()
        self.actions: list[tuple[float, float, bool]] = []     # (monotonic arrival, capture_to_decide_ms, failsafe)
        self.diagnostics: dict[str, dict] = {}
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node('soak_monitor', context=self.context)
        self.node.create_subscription(Action, 'action', self._on_action, qos.ACTION)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics,
                                      QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, name='soak-monitor', daemon=True)
        self.thread.start()

    def _spin(self):
        try:
            self.executor.spin()
        except Exception:   # noqa: BLE001 - the context shut down under it at close()
            pass

    def _on_action(self, msg) -> None:
        with self.lock:
            self.actions.append((time.monotonic(), float(msg.capture_to_decide_ms), msg.trigger == 'watchdog'))

    def _on_diagnostics(self, msg) -> None:
        with self.lock:
            for status in msg.status:
                if status.name.startswith('vidaction_ros: '):
                    node = status.name.split(': ', 1)[1]
                    self.diagnostics[node] = {kv.key: _num(kv.value) for kv in status.values}

    def reset(self) -> None:
        with self.lock:
            self.actions.clear()
            self.diagnostics.clear()

    def snapshot(self):
        with self.lock:
            return list(self.actions), {k: dict(v) for k, v in self.diagnostics.items()}

    def wait_first_action(self, proc: subprocess.Popen, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            with self.lock:
                first = next((t for t, _, failsafe in self.actions if not failsafe), None)
            if first is not None:
                return first
            time.sleep(0.2)
        return None

    def close(self) -> None:
        import rclpy
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.thread.join(5.0)


# -- one pipeline run ----------------------------------------------------------------------------------------
def start_pipeline(args, source: str, fps: float, log_path: str) -> subprocess.Popen:
    rate_hz = min(240.0, fps)
    cmd = [sys.executable, '-m', 'vidaction_ros.nodes.pipeline', '--mode', args.mode, '--source', source,
           '--loop', 'true', '--rate_hz', f'{rate_hz:g}',
           '--set', 'camera.realtime=true', '--set', 'camera.gate_enabled=false']
    for item in args.set:
        cmd += ['--set', item]
    log = open(log_path, 'w')
    try:
        # Its own session: SIGINT to the group reaches the pipeline, which stops its children's groups.
        return subprocess.Popen(cmd, cwd=tempfile.gettempdir(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=dict(os.environ))
    finally:
        log.close()


def stop_pipeline(proc: subprocess.Popen, known_pids: set[int]) -> tuple[int | None, bool]:
    """SIGINT to the process group; (exit code, clean). Anything still running after the timeout is killed,
    also children in their own groups (processes mode), and the stop counts as unclean."""
    clean = True
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            clean = False
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and any(os.path.exists(f'/proc/{p}') for p in known_pids - {proc.pid}):
        time.sleep(0.2)
    for pid in known_pids - {proc.pid}:
        if os.path.exists(f'/proc/{pid}') and _running(pid):
            clean = False
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    return proc.returncode, clean


def _running(pid: int) -> bool:
    try:
        with open(f'/proc/{pid}/stat') as f:
            raw = f.read()
        return raw[raw.rfind(')') + 2] != 'Z'
    except OSError:
        return False


def drops_of(diag: dict) -> dict:
    camera, embedder = diag.get('camera', {}), diag.get('embedder', {})
    memory, policy = diag.get('memory', {}), diag.get('policy', {})

    def n(d, k):
        v = d.get(k, 0)
        return v if isinstance(v, (int, float)) else 0
    out = {'camera_dropped': n(camera, 'dropped'), 'embedder_dropped': n(embedder, 'dropped'),
           'embedder_lost': n(embedder, 'lost'), 'memory_rejected': n(memory, 'rejected'),
           'policy_rejected': n(policy, 'rejected')}
    out['total'] = sum(out.values())
    out['camera_published'] = n(camera, 'published')
    out['camera_captured'] = n(camera, 'captured')
    out['embedder_embedded'] = n(embedder, 'embedded')
    out['policy_decided'] = n(policy, 'decided')
    out['failsafes'] = n(policy, 'failsafes')
    return out


def run_phase(args, monitor: Monitor, name: str, source: str, fps: float, duration_s: float, sample_s: float,
              work_dir: str, out) -> dict:
    """Start the pipeline, wait for its first Action, sample for duration_s, stop it; the raw record."""
    log_path = os.path.join(work_dir, f'{name}.log')
    monitor.reset()
    mapped_by_self_before = shm_mapped('self')
    proc = start_pipeline(args, source, fps, log_path)
    record = {'phase': name, 'input_fps': fps, 'rate_hz': min(240.0, fps), 'log': log_path, 'samples': [],
              'crashed': False, 'started': False}
    known_pids: set[int] = {proc.pid}
    shm_seen: set[str] = set()
    rings_seen: set[str] = set()
    try:
        t0 = monitor.wait_first_action(proc, STARTUP_TIMEOUT_S)
        if t0 is None:
            out.write(f'[{name}] no Action within {STARTUP_TIMEOUT_S:.0f} s (exit code {proc.poll()}); '
                      f'log {log_path}:\n{_tail(log_path)}\n')
            record['crashed'] = proc.poll() is not None
            return record
        record['started'] = True
        out.write(f'[{name}] first Action after start; {args.mode} mode, {fps:g} fps input, '
                  f'measuring {duration_s:.0f} s\n')
        out.flush()
        expected_processes = None
        next_sample = t0
        end = t0 + duration_s
        while True:
            now = time.monotonic()
            if now >= next_sample - 1e-3:
                pids = descendants(proc.pid)
                known_pids |= set(pids)
                sample = process_sample(pids)
                rings = ring_segments(pids)
                rings_seen |= set(rings)
                shm_seen |= set(sample['shm_names'])
                actions, _ = monitor.snapshot()
                sample.update(t_s=round(now - t0, 2), rings=len(rings),
                              actions=sum(1 for a in actions if a[0] >= t0))
                del sample['shm_names']
                record['samples'].append(sample)
                if expected_processes is None:
                    expected_processes = sample['processes']
                if proc.poll() is not None or sample['processes'] < expected_processes:
                    record['crashed'] = True
                    out.write(f'[{name}] pipeline lost a process at t={now - t0:.0f} s '
                              f'(exit code {proc.poll()}); log {log_path}:\n{_tail(log_path)}\n')
                    break
                if args.verbose:
                    out.write(f"[{name}] t={sample['t_s']:6.1f}s rss {sample['rss_mb']:.1f} MB fds "
                              f"{sample['fds']} threads {sample['threads']} shm {sample['shm']} rings "
                              f"{sample['rings']} actions {sample['actions']}\n")
                    out.flush()
                if now >= end - 1e-3:
                    break
                next_sample = min(next_sample + sample_s, end)
            time.sleep(max(0.0, min(next_sample, end) - time.monotonic()))
        t_end = time.monotonic()
        record['t0'], record['t_end'] = t0, t_end
        actions, diag = monitor.snapshot()
        record['actions'] = [a for a in actions if t0 <= a[0] <= t_end]
        record['diagnostics'] = diag
    finally:
        record['exit_code'], record['clean_stop'] = stop_pipeline(proc, known_pids)
        time.sleep(0.5)
        # Leftovers: this pipeline's rings, and the DDS segments its processes mapped that we do not map
        # ourselves (our own participant's stay while we run; the pipeline's participants' must be gone).
        # Fast DDS's port mailboxes (fastrtps_port<N>) are shared by every participant of a domain and left
        # in place by design (`fastdds shm clean` sweeps them): reported, not counted as a leak.
        ours = shm_mapped('self') | mapped_by_self_before
        candidates = rings_seen | set(ring_segments(known_pids)) | (shm_seen - ours)
        left = sorted(n for n in candidates if os.path.exists(os.path.join(SHM_DIR, n)))
        record['shm_leftovers'] = [n for n in left if not n.startswith(DDS_PORT_PREFIX)]
        record['dds_port_segments_left'] = [n for n in left if n.startswith(DDS_PORT_PREFIX)]
        record['rings_seen'] = sorted(rings_seen)
    return record


def _tail(path: str, n: int = 3000) -> str:
    try:
        with open(path, errors='replace') as f:
            return f.read()[-n:]
    except OSError:
        return ''


def latency_stats(actions, start: float, end: float) -> dict:
    xs = [ms for t, ms, failsafe in actions if start <= t <= end and not failsafe]
    return {'n': len(xs), 'p50_ms': percentile(xs, 50), 'p99_ms': percentile(xs, 99)}


def summarise_soak(record: dict, window_s: float) -> dict:
    samples = record['samples']
    t0, t_end = record['t0'], record['t_end']
    duration = t_end - t0
    steady = next((s for s in samples if s['t_s'] >= window_s - 1e-6), samples[-1])
    last = samples[-1]
    first = latency_stats(record['actions'], t0, t0 + window_s)
    lastw = latency_stats(record['actions'], t_end - window_s, t_end)
    total = latency_stats(record['actions'], t0, t_end)
    decided = [a for a in record['actions'] if not a[2]]
    drops = drops_of(record['diagnostics'])
    return {
        'window_s': round(window_s, 2), 'duration_s': round(duration, 2),
        'rss_mb_first_sample': round(samples[0]['rss_mb'], 2),
        'rss_mb_start': round(steady['rss_mb'], 2), 'rss_mb_end': round(last['rss_mb'], 2),
        'rss_mb_max': round(max(s['rss_mb'] for s in samples), 2),
        'fds_start': steady['fds'], 'fds_end': last['fds'],
        'fds_min': min(s['fds'] for s in samples if s['t_s'] >= steady['t_s']),
        'fds_max': max(s['fds'] for s in samples if s['t_s'] >= steady['t_s']),
        'shm_start': steady['shm'], 'shm_end': last['shm'], 'rings_start': steady['rings'],
        'rings_end': last['rings'], 'threads_start': steady['threads'], 'threads_end': last['threads'],
        'processes': last['processes'],
        'p50_ms_first_min': first['p50_ms'], 'p99_ms_first_min': first['p99_ms'], 'n_first_min': first['n'],
        'p50_ms_last_min': lastw['p50_ms'], 'p99_ms_last_min': lastw['p99_ms'], 'n_last_min': lastw['n'],
        'p50_ms': total['p50_ms'], 'p99_ms': total['p99_ms'],
        'actions': len(record['actions']), 'failsafes': sum(1 for a in record['actions'] if a[2]),
        'decisions_per_s': len(decided) / duration if duration > 0 else 0.0,
        'dropped': drops['total'], 'drops': drops,
    }


def _ratio(a: float, b: float) -> float:
    return a / b if b else float('nan')


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and x == x and x not in (float('inf'), float('-inf'))


def _clean(obj):
    """JSON without NaN (null instead): strict parsers reject NaN."""
    if isinstance(obj, float):
        return obj if _finite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='bench/soak.py', description=__doc__.split('\n\n')[0])
    parser.add_argument('--minutes', type=float, default=10.0, help='soak duration (default 10)')
    parser.add_argument('--json', default='', help='write the results here')
    parser.add_argument('--mode', choices=('processes', 'composed'), default='processes')
    parser.add_argument('--source', default=DEFAULT_VIDEO, help='AVI video to loop (re-timed to --fps)')
    parser.add_argument('--fps', type=float, default=30.0, help='input frame rate and reasoning rate (30)')
    parser.add_argument('--sample-s', type=float, default=10.0, help='sampling period (10; at most 1/6 of the run)')
    parser.add_argument('--overload-factor', type=float, default=3.0, help='overload input = this x --fps (3)')
    parser.add_argument('--overload-s', type=float, default=None,
                        help='overload phase length (default duration/5 within 15..120 s; 0 = skip)')
    parser.add_argument('--overload-p99-factor', type=float, default=2.0,
                        help="overload target: p99 <= this x the soak's p99 (2)")
    parser.add_argument('--set', action='append', default=[], metavar='NODE.PARAM=VALUE',
                        help='extra pipeline parameter overrides (passed to vidaction_ros.nodes.pipeline)')
    parser.add_argument('--keep', action='store_true', help='keep the work directory (videos, logs)')
    parser.add_argument('-v', '--verbose', action='store_true', help='print every sample')
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error('--minutes must be > 0')
    out = sys.stdout
    duration_s = args.minutes * 60.0
    window_s = min(60.0, duration_s / 3.0)
    sample_s = max(0.5, min(args.sample_s, duration_s / 6.0))
    overload_s = (min(120.0, max(15.0, duration_s / 5.0)) if args.overload_s is None else args.overload_s)
    overload_fps = args.fps * args.overload_factor

    work_dir = tempfile.mkdtemp(prefix='vidaction_soak_')
    monitor = Monitor()
    ok = False
    try:
        video = retimed_video(args.source, args.fps, work_dir)
        soak = run_phase(args, monitor, 'soak', video, args.fps, duration_s, sample_s, work_dir, out)
        if not soak['started'] or not soak['samples']:
            result = {'minutes': args.minutes, 'error': 'pipeline did not start', 'log': soak['log'],
                      'exit_code': soak['exit_code'], 'pass': False}
            _write(args.json, result)
            return 1
        s = summarise_soak(soak, window_s)
        rss_growth = _ratio(s['rss_mb_end'] - s['rss_mb_start'], s['rss_mb_start'])
        p99_ratio = _ratio(s['p99_ms_last_min'], s['p99_ms_first_min'])
        p50_ratio = _ratio(s['p50_ms_last_min'], s['p50_ms_first_min'])
        targets = {
            'no_crash': not soak['crashed'],
            'rss_growth_lt_5pct': _finite(rss_growth) and rss_growth < RSS_GROWTH_MAX,
            'fds_flat': s['fds_end'] == s['fds_start'],
            'shm_flat': s['shm_end'] == s['shm_start'] and s['rings_end'] == s['rings_start'],
            'p99_last_within_20pct_of_first': _finite(p99_ratio) and p99_ratio <= P99_RATIO_MAX,
            'no_shm_leftovers': not soak['shm_leftovers'],
            'clean_stop': soak['clean_stop'] and soak['exit_code'] == 0,
        }
        result = {'minutes': args.minutes, 'mode': args.mode, 'input_fps': args.fps, 'rate_hz': soak['rate_hz'],
                  **s, 'rss_growth': rss_growth, 'p50_ratio_last_first': p50_ratio,
                  'p99_ratio_last_first': p99_ratio, 'shm_leftovers': soak['shm_leftovers'],
                  'dds_port_segments_left': soak['dds_port_segments_left'],
                  'rings_seen': soak['rings_seen'], 'exit_code': soak['exit_code'], 'sample_s': sample_s,
                  'cpus': os.cpu_count(), 'samples': soak['samples']}

        out.write(f"\nsoak: {args.mode} mode, {args.fps:g} fps input (rate_hz {soak['rate_hz']:g}, gate off), "
                  f"{s['duration_s']:.0f} s, window {window_s:.0f} s, sample every {sample_s:g} s, "
                  f"{s['processes']} processes\n")
        out.write(f"  actions {s['actions']} ({s['decisions_per_s']:.2f}/s sustainable), failsafes "
                  f"{s['failsafes']}, dropped {s['dropped']} {_drops_text(s['drops'])}\n")
        out.write(f"  latency capture->decide  first window p50 {s['p50_ms_first_min']:.1f} p99 "
                  f"{s['p99_ms_first_min']:.1f} ms (n={s['n_first_min']}) | last window p50 "
                  f"{s['p50_ms_last_min']:.1f} p99 {s['p99_ms_last_min']:.1f} ms (n={s['n_last_min']}) | "
                  f"whole p50 {s['p50_ms']:.1f} p99 {s['p99_ms']:.1f} ms\n")
        out.write(f"  ratios last/first: p50 {p50_ratio:.3f}  p99 {p99_ratio:.3f}\n")
        out.write(f"  RSS {s['rss_mb_start']:.1f} -> {s['rss_mb_end']:.1f} MB after warm-up ({100 * rss_growth:+.2f} %;"
                  f" first sample {s['rss_mb_first_sample']:.1f}, max {s['rss_mb_max']:.1f})\n")
        out.write(f"  fds {s['fds_start']} -> {s['fds_end']} (min {s['fds_min']} max {s['fds_max']}); threads "
                  f"{s['threads_start']} -> {s['threads_end']}; shm segments mapped {s['shm_start']} -> "
                  f"{s['shm_end']}, frame rings {s['rings_start']} -> {s['rings_end']}\n")
        out.write(f"  stop: exit code {soak['exit_code']}, /dev/shm leftovers {soak['shm_leftovers'] or 'none'}\n")

        overload = None
        if overload_s > 0 and not soak['crashed']:
            video_o = retimed_video(args.source, overload_fps, work_dir)
            rec = run_phase(args, monitor, 'overload', video_o, overload_fps, overload_s,
                            max(0.5, min(args.sample_s, overload_s / 3.0)), work_dir, out)
            overload = _summarise_overload(rec, s, overload_s, args.overload_p99_factor)
            o = overload
            out.write(f"\noverload: {overload_fps:g} fps input (rate_hz {rec['rate_hz']:g}) = "
                      f"{_fmt(o['offered_over_sustainable'], '.1f')}x the sustainable {s['decisions_per_s']:.2f}/s,"
                      f" {overload_s:.0f} s\n")
            out.write(f"  actions {o['actions']} ({_fmt(o['decisions_per_s'], '.2f')}/s), dropped {o['dropped']} "
                      f"{_drops_text(o['drops'])}\n")
            out.write(f"  latency p50 {_fmt(o['p50_ms'], '.1f')} p99 {_fmt(o['p99_ms'], '.1f')} ms (bound "
                      f"{_fmt(o['p99_bound_ms'], '.1f')} ms = {args.overload_p99_factor:g} x soak p99)\n")
            out.write(f"  stop: exit code {o['exit_code']}, /dev/shm leftovers {o['shm_leftovers'] or 'none'}\n")
            targets.update({f'overload_{k}': v for k, v in o['targets'].items()})
        result['overload'] = overload
        result['targets'] = targets
        ok = all(targets.values())
        result['pass'] = ok

        out.write('\ntargets:\n')
        for name, passed in targets.items():
            out.write(f"  {'PASS' if passed else 'FAIL'}  {name}\n")
        out.write(f"{'PASS' if ok else 'FAIL'}\n")
        _write(args.json, result)
        if not ok:
            out.write(f'logs kept in {work_dir}\n')
    finally:
        monitor.close()
        if ok and not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
    return 0 if ok else 1


def _summarise_overload(rec: dict, soak: dict, overload_s: float, p99_factor: float) -> dict:
    started = rec['started'] and bool(rec['samples']) and 't0' in rec
    lat = latency_stats(rec.get('actions', []), rec.get('t0', 0), rec.get('t_end', 0)) if started else \
        {'n': 0, 'p50_ms': float('nan'), 'p99_ms': float('nan')}
    duration = (rec['t_end'] - rec['t0']) if started else 0.0
    decided = [a for a in rec.get('actions', []) if not a[2]]
    drops = drops_of(rec.get('diagnostics', {}))
    rate = len(decided) / duration if duration > 0 else float('nan')
    bound = p99_factor * soak['p99_ms'] if _finite(soak['p99_ms']) else float('nan')
    o = {'input_fps': rec['input_fps'], 'rate_hz': rec['rate_hz'], 'duration_s': round(duration, 2),
         'offered_over_sustainable': _ratio(rec['rate_hz'], soak['decisions_per_s']),
         'actions': len(rec.get('actions', [])), 'decisions_per_s': rate, 'p50_ms': lat['p50_ms'],
         'p99_ms': lat['p99_ms'], 'p99_bound_ms': bound, 'dropped': drops['total'], 'drops': drops,
         'exit_code': rec['exit_code'], 'shm_leftovers': rec['shm_leftovers'], 'samples': rec['samples'],
         'rss_mb_end': rec['samples'][-1]['rss_mb'] if rec['samples'] else None,
         'fds_end': rec['samples'][-1]['fds'] if rec['samples'] else None}
    o['targets'] = {
        'no_crash': started and not rec['crashed'],
        'drops_counted': drops['total'] > 0,
        'latency_bounded': _finite(lat['p99_ms']) and _finite(bound) and lat['p99_ms'] <= bound,
        'no_shm_leftovers': not rec['shm_leftovers'],
        'clean_stop': rec['clean_stop'] and rec['exit_code'] == 0,
    }
    return o


def _fmt(x, spec: str) -> str:
    return format(x, spec) if _finite(x) else 'n/a'


def _drops_text(d: dict) -> str:
    return (f"(camera {d['camera_dropped']}, embedder queue {d['embedder_dropped']}, lost {d['embedder_lost']}; "
            f"published {d['camera_published']}, embedded {d['embedder_embedded']}, decided {d['policy_decided']})")


def _write(path: str, result: dict) -> None:
    if path:
        with open(path, 'w') as f:
            json.dump(_clean(result), f, indent=2)


if __name__ == '__main__':
    raise SystemExit(main())
