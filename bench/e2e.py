#!/usr/bin/env python3
"""End-to-end latency: camera -> Action for the composed pipeline on the bundled video, on this CPU.

    python bench/e2e.py [--frames 300] [--rate_hz 10] [--lockstep] [--mode composed|processes] [--json PATH]

Live mode (default): the file is played at its own 10 fps as a camera would deliver it; the reasoning rate
takes frames from it; latency is measured from the capture thread's grab to the Action's publication
(Action.times), per stage. --mode processes runs the four nodes as four processes (`vidaction_pipeline --mode
processes`, frames through iceoryx2 by default) and times their Actions from this process the same way.
Prints a table; --json writes
{"frames", "actions", "p50_ms", "p99_ms", "stages": {stage: {"p50_ms", "p99_ms"}}, "hops", "counts": {...}}.
Run it from outside the source tree (scripts/env.sh first), e.g. `cd /tmp && python /path/bench/e2e.py`.
"""
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_DOMAIN_ID', str(os.getpid() % 90 + 5))

from vidaction_ros.nodes import pipeline  # noqa: E402
from vidaction_ros.tools import demo  # noqa: E402


def main(argv=None) -> int:
    parser = pipeline.build_parser('bench/e2e.py')
    parser.add_argument('--frames', type=int, default=300, help='frames to publish (0 = whole video)')
    parser.add_argument('--json', default='', help='write the results here')
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(raw)
    args.set = list(args.set) + [f'camera.max_frames={args.frames}']
    printer = demo.ActionPrinter(changes_only=True, out=io.StringIO(), lockstep=args.lockstep)
    if args.mode == 'processes':
        camera, embedder = run_processes(raw, args.frames, printer, timeout=1200), {}
    else:
        camera, embedder, _ = demo.run(args, printer, timeout=1200)
    stages = {k.replace('_ms', ''): {'p50_ms': w.percentile(50), 'p99_ms': w.percentile(99)}
              for k, w in printer.latency.items()}
    total = printer.latency['capture_to_decide_ms']
    result = {'frames': camera['published'], 'actions': printer.count, 'process_mode': args.mode,
              'p50_ms': total.percentile(50),
              'p99_ms': total.percentile(99), 'stages': stages, 'counts': {'camera': camera, 'embedder': embedder},
              'mode': 'lockstep' if args.lockstep else 'live', 'cpus': os.cpu_count()}
    out = sys.stdout
    out.write(f"{'stage':<22}{'p50 ms':>10}{'p99 ms':>10}\n")
    for name, values in stages.items():
        out.write(f"{name:<22}{values['p50_ms']:>10.1f}{values['p99_ms']:>10.1f}\n")
    hops = {k: {'p50_ms': w.percentile(50), 'p99_ms': w.percentile(99)} for k, w in printer.hops.items()}
    result['hops'] = hops
    out.write('inside those stages, per frame all but the model, and the Action to a subscriber:\n')
    for name, values in hops.items():
        out.write(f"  {name:<32}{values['p50_ms']:>8.2f}{values['p99_ms']:>10.2f}\n")
    embed_p99 = stages['embed']['p99_ms']
    out.write(f"frames {result['frames']}  actions {result['actions']}  camera->Action p50 {result['p50_ms']:.1f} "
              f"p99 {result['p99_ms']:.1f} ms; p99 minus embedder p99 {result['p99_ms'] - embed_p99:.1f} ms\n")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)
    return 0


def run_processes(raw_args: list[str], frames: int, printer, timeout: float) -> dict:
    """`vidaction_pipeline --mode processes` with this command's pipeline arguments (and the demo's overrides)
    as a child process group; its Actions timed here until every frame is decided (or no per-frame Action for
    10 s once they came, 30 s lock-step), then SIGINT. Returns {'published': Actions of embedded frames, 'log':
    the processes' log} (the camera's own counters are in its process)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from vidaction_ros.tools.replay import stop_group
    own = {'--frames', '--json', '--mode'}          # this command's, or set below
    passed, skip = [], False
    for arg in raw_args:
        if skip:
            skip = False
        elif arg in own:
            skip = True                                 # its value follows
        elif arg.split('=', 1)[0] not in own:
            passed.append(arg)
    sets = [f'{node}.{key}={value}' for node, params in demo.DEMO_OVERRIDES.items() for key, value in params.items()]
    if '--lockstep' in passed:
        sets.append('camera.lockstep_action_subscribers=2')   # the camera and this printer: no first frame unheard
    command = [sys.executable, '-m', 'vidaction_ros.nodes.pipeline', '--mode', 'processes', *passed,
               '--set', f'camera.max_frames={frames}', *[item for s in sets for item in ('--set', s)]]
    rclpy.init()
    node = printer.make_node()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    log = open(os.path.join(tempfile.gettempdir(), f'e2e_processes_{os.getpid()}.log'), 'w')
    proc = subprocess.Popen(command, cwd=tempfile.gettempdir(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    started = time.monotonic()
    decided = [t for t in demo.PER_FRAME_TRIGGERS if t not in demo.NOT_EMBEDDED]
    # Lock-step: a frame whose Action did not come back is re-sent after the camera's lockstep_timeout_s
    # (20 s): wait past that before calling the run over.
    quiet_s = 30.0 if printer.lockstep else 10.0
    try:
        while time.monotonic() - started < timeout and proc.poll() is None:
            # Done when every frame is decided, or once frames came and then none for quiet_s (a gated live run
            # decides fewer). A failsafe before the first frame (the watchdog while models load) is no start.
            done = sum(printer.by_trigger[t] for t in decided)
            per_frame = sum(printer.by_trigger[t] for t in demo.PER_FRAME_TRIGGERS)
            if done >= frames or (per_frame and time.monotonic() - printer.last_at > quiet_s):
                break
            time.sleep(0.2)         # polling a counter the subscription thread updates: how often to look
    finally:
        stop_group(proc, timeout=60)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    if not printer.count:
        raise SystemExit(f'no Action from the four processes (exit code {proc.returncode}); log: {log.name}')
    return {'published': sum(printer.by_trigger[t] for t in decided), 'log': log.name}


if __name__ == '__main__':
    from vidaction_ros.nodes.runtime import exit_process
    exit_process(main())   # lifecycle nodes torn down at interpreter exit can abort it: see exit_process
