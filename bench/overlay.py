#!/usr/bin/env python3
"""Does the overlay slow the hot path? camera -> Action of the composed pipeline with the overlay node off and
on, same video, same frames, back to back in one run (each its own bench/e2e.py process).

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
    rows = {'off': run_e2e(args.frames, []), 'on': run_e2e(args.frames, ['--overlay', 'true'])}
    print(f"{'overlay':<10}{'actions':>9}{'p50 ms':>10}{'p99 ms':>10}")
    for name, r in rows.items():
        print(f"{name:<10}{r['actions']:>9}{r['p50_ms']:>10.1f}{r['p99_ms']:>10.1f}")
    ratio = {k: rows['on'][k] / rows['off'][k] for k in ('p50_ms', 'p99_ms')}
    print(f"on/off ratio: p50 {ratio['p50_ms']:.2f}  p99 {ratio['p99_ms']:.2f}  ({os.cpu_count()} CPUs, "
          f"{args.frames} frames)")
    if args.json:
        Path(args.json).write_text(json.dumps({'rows': rows, 'ratio': ratio, 'cpus': os.cpu_count()}, indent=2))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
