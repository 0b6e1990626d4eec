#!/usr/bin/env python3
"""End-to-end latency: camera -> Action for the composed pipeline on the bundled video, on this CPU.

    python bench/e2e.py [--frames 300] [--rate_hz 10] [--lockstep] [--json PATH]

Live mode (default): the file is played at its own 10 fps as a camera would deliver it; the reasoning rate
takes frames from it; latency is measured from the capture thread's grab to the Action's publication
(Action.times), per stage. Prints a table; --json writes
{"frames", "actions", "p50_ms", "p99_ms", "stages": {stage: {"p50_ms", "p99_ms"}}, "counts": {...}}.
Run it from outside the source tree (scripts/env.sh first), e.g. `cd /tmp && python /path/bench/e2e.py`.
"""
import io
import json
import os
import sys

os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_DOMAIN_ID', str(os.getpid() % 90 + 5))

from vidaction_ros.nodes import pipeline  # noqa: E402
from vidaction_ros.tools import demo  # noqa: E402


def main(argv=None) -> int:
    parser = pipeline.build_parser('bench/e2e.py')
    parser.add_argument('--frames', type=int, default=300, help='frames to publish (0 = whole video)')
    parser.add_argument('--json', default='', help='write the results here')
    args = parser.parse_args(argv)
    demo.require_composed(parser, args)
    args.set = list(args.set) + [f'camera.max_frames={args.frames}']
    printer = demo.ActionPrinter(changes_only=True, out=io.StringIO())
    camera, embedder, _ = demo.run(args, printer, timeout=1200)
    stages = {k.replace('_ms', ''): {'p50_ms': w.percentile(50), 'p99_ms': w.percentile(99)}
              for k, w in printer.latency.items()}
    total = printer.latency['capture_to_decide_ms']
    result = {'frames': camera['published'], 'actions': printer.count, 'p50_ms': total.percentile(50),
              'p99_ms': total.percentile(99), 'stages': stages, 'counts': {'camera': camera, 'embedder': embedder},
              'mode': 'lockstep' if args.lockstep else 'live', 'cpus': os.cpu_count()}
    out = sys.stdout
    out.write(f"{'stage':<22}{'p50 ms':>10}{'p99 ms':>10}\n")
    for name, values in stages.items():
        out.write(f"{name:<22}{values['p50_ms']:>10.1f}{values['p99_ms']:>10.1f}\n")
    hops = {k: {'p50_ms': w.percentile(50), 'p99_ms': w.percentile(99)} for k, w in printer.hops.items()}
    result['hops'] = hops
    out.write('inside those stages:\n')
    for name, values in hops.items():
        out.write(f"  {name:<32}{values['p50_ms']:>8.2f}{values['p99_ms']:>10.2f}\n")
    embed_p99 = stages['embed']['p99_ms']
    out.write(f"frames {result['frames']}  actions {result['actions']}  camera->Action p50 {result['p50_ms']:.1f} "
              f"p99 {result['p99_ms']:.1f} ms; p99 minus embedder p99 {result['p99_ms'] - embed_p99:.1f} ms\n")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == '__main__':
    from vidaction_ros.nodes.runtime import exit_process
    exit_process(main())   # lifecycle nodes torn down at interpreter exit can abort it: see exit_process
