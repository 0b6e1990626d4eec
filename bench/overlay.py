#!/usr/bin/env python3
"""Does the overlay (or the Foxglove live view) slow the hot path? camera -> Action of the composed pipeline
with the overlay node off, on, and on with the Foxglove server (a client is not needed: the server encodes
only for subscribers, so this is its idle cost), same video, same frames, back to back in one run (each its own
bench/e2e.py process).

    python bench/overlay.py [--frames 300] [--json PATH]

Prints p50/p99 camera->Action for both and the on/off ratios. Run from outside the source tree after
scripts/env.sh (as bench/e2e.py).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

E2E = Path(__file__).with_name('e2e.py')


def run_e2e(frames: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, 'e2e.json')
        subprocess.run([sys.executable, str(E2E), '--frames', str(frames), '--json', str(out), *extra],
                       check=True, stdout=subprocess.DEVNULL, env=dict(os.environ))
        return json.loads(out.read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--frames', type=int, default=300)
    parser.add_argument('--json', default='')
    args = parser.parse_args(argv)
    rows = {'off': run_e2e(args.frames, []), 'on': run_e2e(args.frames, ['--overlay', 'true']),
            'foxglove': run_e2e(args.frames, ['--foxglove', 'true', '--set', 'overlay.foxglove_port=0'])}
    print(f"{'overlay':<10}{'actions':>9}{'p50 ms':>10}{'p99 ms':>10}")
    for name, r in rows.items():
        print(f"{name:<10}{r['actions']:>9}{r['p50_ms']:>10.1f}{r['p99_ms']:>10.1f}")
    ratio = {row: {k: rows[row][k] / rows['off'][k] for k in ('p50_ms', 'p99_ms')} for row in ('on', 'foxglove')}
    for row, r in ratio.items():
        print(f"{row}/off ratio: p50 {r['p50_ms']:.2f}  p99 {r['p99_ms']:.2f}")
    print(f'({os.cpu_count()} CPUs, {args.frames} frames each)')
    if args.json:
        Path(args.json).write_text(json.dumps({'rows': rows, 'ratio': ratio, 'cpus': os.cpu_count()}, indent=2))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
