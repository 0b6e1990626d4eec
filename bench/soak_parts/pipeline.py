"""Process supervision: the re-timed input video, starting and stopping the pipeline, and one measured run
(phase) of it with its samples and /dev/shm leftovers."""
from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import tempfile
import time

from .monitor import Monitor
from .procfs import SHM_DIR, descendants, is_shared_by_design, process_sample, ring_segments, shm_mapped

STARTUP_TIMEOUT_S = 240.0          # model loading on a loaded 2-core machine
STOP_TIMEOUT_S = 30.0


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
        started_at = time.monotonic()
        t0 = monitor.wait_first_action(proc, STARTUP_TIMEOUT_S)
        if t0 is None:
            waited = time.monotonic() - started_at
            why = (f'pipeline exited with code {proc.returncode} after {waited:.0f} s, before its first Action'
                   if proc.poll() is not None else f'no Action within {STARTUP_TIMEOUT_S:.0f} s')
            record['problems'] = _problems(log_path)
            problems = '\n'.join(record['problems']) or '(none logged)'
            out.write(f'[{name}] {why}; log {log_path}\nwarnings and errors:\n{problems}\n'
                      f'last lines:\n{_tail(log_path)}\n')
            record['crashed'] = proc.poll() is not None
            record['startup_failure'] = why
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
        # Fast DDS's port mailboxes (fastrtps_port<N>, and their sem.fastrtps_port<N>_mutex) are shared by
        # every participant of a domain and left in place by design (`fastdds shm clean` sweeps them):
        # reported, not counted as a leak.
        ours = shm_mapped('self') | mapped_by_self_before
        candidates = rings_seen | set(ring_segments(known_pids)) | (shm_seen - ours)
        left = sorted(n for n in candidates if os.path.exists(os.path.join(SHM_DIR, n)))
        record['shm_leftovers'] = [n for n in left if not is_shared_by_design(n)]
        record['dds_port_segments_left'] = [n for n in left if is_shared_by_design(n)]
        record['rings_seen'] = sorted(rings_seen)
    return record


def _problems(path: str, limit: int = 20) -> list[str]:
    """The log's WARN / ERROR / FATAL lines and Python tracebacks' last lines (what says why a start failed),
    the first `limit` of them."""
    try:
        with open(path, errors='replace') as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    picked = [line for line in lines if line.startswith(('[WARN]', '[ERROR]', '[FATAL]', 'Traceback'))
              or (line and not line.startswith((' ', '[')) and ('Error' in line or 'Warning' in line))]
    return [line[:400] for line in picked[:limit]]


def _tail(path: str, n: int = 3000) -> str:
    try:
        with open(path, errors='replace') as f:
            return f.read()[-n:]
    except OSError:
        return ''
