#!/usr/bin/env python3
"""Does the overlay (or the Foxglove live view) slow the hot path? camera -> Action of the composed pipeline
with the overlay node off, on, and on with the Foxglove server (a client is not needed: the server encodes
only for subscribers, so this is its idle cost), same video, same frames, back to back in one run (each its own
bench/e2e.py process).

    python bench/overlay.py [--frames 300] [--rounds 2] [--json PATH]

The three runs are repeated `rounds` times, interleaved (off, on, foxglove, off, ...), so a slow moment of the
machine does not land on one configuration only. Prints every run's p50/p99 camera->Action, the mean per
configuration and the ratios to off. Run from outside the source tree after
scripts/env.sh (as bench/e2e.py).
"""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))   # PYTHONSAFEPATH=1 leaves this folder off sys.path
from e2e_rounds import interleaved, parse_args  # noqa: E402

KEYS = ('p50_ms', 'p99_ms')


def main(argv=None) -> int:
    args = parse_args(__doc__, argv)
    configs = {'off': [], 'on': ['--overlay', 'true'],
               'foxglove': ['--foxglove', 'true', '--set', 'overlay.foxglove_port=0']}
    print(f"{'round':<7}{'overlay':<10}{'p50 ms':>10}{'p99 ms':>10}")
    runs, rows = interleaved(configs, args.frames, args.rounds, summarise=lambda r: r, keys=KEYS,
                             show=lambda n, name, r: print(f"{n:<7}{name:<10}{r['p50_ms']:>10.1f}"
                                                           f"{r['p99_ms']:>10.1f}", flush=True))
    print(f"mean of {args.rounds} round(s):")
    for name, r in rows.items():
        print(f"       {name:<10}{r['p50_ms']:>10.1f}{r['p99_ms']:>10.1f}")
    ratio = {row: {k: rows[row][k] / rows['off'][k] for k in KEYS} for row in ('on', 'foxglove')}
    for row, r in ratio.items():
        print(f"{row}/off ratio: p50 {r['p50_ms']:.2f}  p99 {r['p99_ms']:.2f}")
    print(f'({os.cpu_count()} CPUs, {args.frames} frames each)')
    if args.json:
        Path(args.json).write_text(json.dumps({'runs': runs, 'mean': rows, 'ratio': ratio, 'cpus': os.cpu_count()},
                                              indent=2))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
