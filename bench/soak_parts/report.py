"""Reporting: the printed table (soak, overload, targets) and the JSON file."""
from __future__ import annotations

import json

from .analysis import _finite


def _clean(obj):
    """JSON without NaN (null instead): strict parsers reject NaN."""
    if isinstance(obj, float):
        return obj if _finite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def print_soak(out, args, soak: dict, s: dict, window_s: float, sample_s: float, rss_growth: float,
               p50_ratio: float, p99_ratio: float) -> None:
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
              f"{s['shm_end']}, frame segments {s['rings_start']} -> {s['rings_end']}\n")
    out.write(f"  stop: exit code {soak['exit_code']}, /dev/shm leftovers {soak['shm_leftovers'] or 'none'}\n")


def print_overload(out, args, rec: dict, s: dict, o: dict, overload_fps: float, overload_s: float) -> None:
    out.write(f"\noverload: {overload_fps:g} fps input (rate_hz {rec['rate_hz']:g}) = "
              f"{_fmt(o['offered_over_sustainable'], '.1f')}x the sustainable {s['decisions_per_s']:.2f}/s,"
              f" {overload_s:.0f} s\n")
    out.write(f"  actions {o['actions']} ({_fmt(o['decisions_per_s'], '.2f')}/s), dropped {o['dropped']} "
              f"{_drops_text(o['drops'])}\n")
    out.write(f"  latency p50 {_fmt(o['p50_ms'], '.1f')} p99 {_fmt(o['p99_ms'], '.1f')} ms (bound "
              f"{_fmt(o['p99_bound_ms'], '.1f')} ms = {args.overload_p99_factor:g} x soak p99)\n")
    out.write(f"  stop: exit code {o['exit_code']}, /dev/shm leftovers {o['shm_leftovers'] or 'none'}\n")


def print_targets(out, targets: dict, ok: bool) -> None:
    out.write('\ntargets:\n')
    for name, passed in targets.items():
        out.write(f"  {'PASS' if passed else 'FAIL'}  {name}\n")
    out.write(f"{'PASS' if ok else 'FAIL'}\n")


def _fmt(x, spec: str) -> str:
    return format(x, spec) if _finite(x) else 'n/a'


def _drops_text(d: dict) -> str:
    return (f"(camera {d['camera_dropped']}, embedder queue {d['embedder_dropped']}, lost {d['embedder_lost']}; "
            f"published {d['camera_published']}, embedded {d['embedder_embedded']}, decided {d['policy_decided']})")


def _write(path: str, result: dict) -> None:
    if path:
        with open(path, 'w') as f:
            json.dump(_clean(result), f, indent=2)
