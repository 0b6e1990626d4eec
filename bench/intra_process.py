#!/usr/bin/env python3
"""Intra-process delivery of `embedding` and `memory/context` in the composed pipeline, against the same
pipeline passing them over DDS (serialised, through the middleware), back to back in one run, rounds
interleaved: camera -> Action and embed end -> Action (the two hops it changes).

    python bench/intra_process.py [--frames 300] [--rounds 2] [--json PATH]

Run from outside the source tree after scripts/env.sh (as bench/e2e.py).
"""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))   # PYTHONSAFEPATH=1 leaves this folder off sys.path
from e2e_rounds import interleaved, parse_args  # noqa: E402

OFF = ['--set', 'embedder.intra_process=false', '--set', 'memory.intra_process=false',
       '--set', 'policy.intra_process=false']
KEYS = ('p50_ms', 'p99_ms', 'hops_p50_ms', 'hops_p99_ms')


def summary(r: dict) -> dict:
    hops = r['stages']['embed_to_decide']
    return {'p50_ms': r['p50_ms'], 'p99_ms': r['p99_ms'], 'hops_p50_ms': hops['p50_ms'],
            'hops_p99_ms': hops['p99_ms']}


def show(round_: int, name: str, r: dict) -> None:
    print(f"{round_:<7}{name:<11}{r['p50_ms']:>16.1f}{r['p99_ms']:>8.1f}{r['hops_p50_ms']:>19.2f}"
          f"{r['hops_p99_ms']:>8.2f}", flush=True)


def main(argv=None) -> int:
    args = parse_args(__doc__, argv)
    configs = {'dds': OFF, 'intra': []}
    print(f"{'round':<7}{'hand-over':<11}{'cam->Action p50':>16}{'p99':>8}{'embed->Action p50':>19}{'p99':>8}")
    runs, mean = interleaved(configs, args.frames, args.rounds, summary, KEYS, show)
    ratio = {k: mean['intra'][k] / mean['dds'][k] for k in KEYS}
    print(f"mean of {args.rounds} round(s): intra/dds camera->Action p50 {ratio['p50_ms']:.2f} p99 "
          f"{ratio['p99_ms']:.2f}; embed->Action p50 {ratio['hops_p50_ms']:.2f} p99 {ratio['hops_p99_ms']:.2f} "
          f"({os.cpu_count()} CPUs)")
    if args.json:
        Path(args.json).write_text(json.dumps({'runs': runs, 'mean': mean, 'ratio': ratio}, indent=2))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
