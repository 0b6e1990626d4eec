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
iceoryx2 sample pools and the DDS shared-memory transport's segments); latency is Action.capture_to_decide_ms
of every Action this script's own rclpy node receives (watchdog failsafes are counted, not timed).

  window_s   min(60, duration / 3): "first/last minute" below are the first/last window_s of the soak
             (first/last third of a run shorter than 3 minutes). The first window is also the warm-up:
             rss_mb_start, fds_start and shm_start are taken from the first sample at or after it.
  targets    RSS growth after warm-up < 5 %; fds and shm segments flat (end == start); p99 of the last
             window <= 1.2 x p99 of the first (one-sided: a faster end is fine); no shm left after stop
             (the pipeline's iceoryx2 pools, and every DDS segment its processes mapped that this script does not map
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
import os
import shutil
import sys
import tempfile

# PYTHONSAFEPATH=1 (as the tests run it) leaves this script's directory off sys.path: put it there for soak_parts.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from soak_parts.analysis import _ratio, _summarise_overload, soak_targets, summarise_soak  # noqa: E402
from soak_parts.monitor import Monitor  # noqa: E402
from soak_parts.pipeline import retimed_video, run_phase  # noqa: E402
from soak_parts.report import _write, print_overload, print_soak, print_targets  # noqa: E402

os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_DOMAIN_ID', str(os.getpid() % 90 + 5))

DEFAULT_VIDEO = '/usr/share/doc/opencv-doc/examples/data/vtest.avi'


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
            result = {'minutes': args.minutes, 'error': soak.get('startup_failure', 'pipeline did not start'),
                      'problems': soak.get('problems', []), 'log': soak['log'], 'exit_code': soak['exit_code'],
                      'pass': False}
            _write(args.json, result)
            return 1
        s = summarise_soak(soak, window_s)
        rss_growth = _ratio(s['rss_mb_end'] - s['rss_mb_start'], s['rss_mb_start'])
        p99_ratio = _ratio(s['p99_ms_last_min'], s['p99_ms_first_min'])
        p50_ratio = _ratio(s['p50_ms_last_min'], s['p50_ms_first_min'])
        targets = soak_targets(soak, s, rss_growth, p99_ratio)
        result = {'minutes': args.minutes, 'mode': args.mode, 'input_fps': args.fps, 'rate_hz': soak['rate_hz'],
                  **s, 'rss_growth': rss_growth, 'p50_ratio_last_first': p50_ratio,
                  'p99_ratio_last_first': p99_ratio, 'shm_leftovers': soak['shm_leftovers'],
                  'dds_port_segments_left': soak['dds_port_segments_left'],
                  'rings_seen': soak['rings_seen'], 'exit_code': soak['exit_code'], 'sample_s': sample_s,
                  'cpus': os.cpu_count(), 'samples': soak['samples']}

        print_soak(out, args, soak, s, window_s, sample_s, rss_growth, p50_ratio, p99_ratio)

        overload = None
        if overload_s > 0 and not soak['crashed']:
            video_o = retimed_video(args.source, overload_fps, work_dir)
            rec = run_phase(args, monitor, 'overload', video_o, overload_fps, overload_s,
                            max(0.5, min(args.sample_s, overload_s / 3.0)), work_dir, out)
            overload = _summarise_overload(rec, s, overload_s, args.overload_p99_factor)
            print_overload(out, args, rec, s, overload, overload_fps, overload_s)
            targets.update({f'overload_{k}': v for k, v in overload['targets'].items()})
        result['overload'] = overload
        result['targets'] = targets
        ok = all(targets.values())
        result['pass'] = ok

        print_targets(out, targets, ok)
        _write(args.json, result)
        if not ok:
            out.write(f'logs kept in {work_dir}\n')
    finally:
        monitor.close()
        if ok and not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == '__main__':
    raise SystemExit(main())
