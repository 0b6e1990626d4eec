"""The README's first command: the composed pipeline on the bundled real video, printing every Action.

    vidaction_demo [--lockstep] [--changes-only] [--source PATH] [--set node.param=value ...]

This is a command-line tool: its output is the report, so it prints to stdout. The nodes log through
their ROS loggers as usual.
"""
from __future__ import annotations

import collections
import math
import sys
import time

from ..conversions import ms_between, to_seconds
from ..nodes import pipeline
from ..stats import LatencyWindow

DEMO_OVERRIDES = {
    # A file played as a live camera, but stamped with its media time so the printout reads as video time.
    'camera': {'stamp_source': 'media'},
    'memory': {'stamps_are_wall_clock': False},
    'policy': {'log_decisions': 'none'},   # the demo prints every Action itself
}


# Action.TRIGGER_*: Actions for a frame (decided, or kept because the gate found the scene unchanged), and
# those that carry no embedding (a kept decision, a watchdog failsafe).
PER_FRAME_TRIGGERS = ('default', 'prompt', 'memory', 'hold', 'unchanged')
NOT_EMBEDDED = ('unchanged', 'watchdog')


HOPS = {'camera (capture -> published)': ('captured', 'published'),
        'frame hop (-> embed start)': ('published', 'embed_start'),
        'memory (embed end -> context)': ('embed_end', 'memory_end'),
        'policy (context -> decided)': ('memory_end', 'decided')}
OVERHEAD = 'all but the model (per frame)'
DELIVERED = 'Action out (decided -> heard)'


class ActionPrinter:
    """Subscribes to `action` (from another node, as a motion controller does), hears every Action and keeps the
    figures for the summary."""

    def __init__(self, changes_only: bool, out=sys.stdout, lockstep: bool = False):
        self.changes_only = changes_only
        self.out = out
        self.count = 0
        self.by_action = collections.Counter()
        self.latency = {k: LatencyWindow(100_000) for k in
                        ('capture_to_embed_ms', 'embed_ms', 'embed_to_decide_ms', 'capture_to_decide_ms')}
        # The hops inside those stages, from Action.times: where the time beyond the model goes.
        self.hops = {k: LatencyWindow(100_000) for k in HOPS}
        # Per frame, camera->Action minus the embedding: the plumbing as one figure. And the Action's own trip
        # to this subscriber (after `decided`, which the Action has to carry before it is published).
        self.hops[OVERHEAD] = LatencyWindow(100_000)
        self.hops[DELIVERED] = LatencyWindow(100_000)
        self.by_trigger = collections.Counter()
        self.last_at = time.monotonic()
        self.node = None
        self.lockstep = lockstep

    def make_node(self, context=None):
        from rclpy.node import Node
        from .. import qos
        from ..msg import Action
        self.node = Node('demo_action_printer', context=context)
        # Every Action counts here, also on a loaded machine. The camera starts a lock-step run when it sees
        # this reader in the graph, which can be before the policy's writer has matched it: a volatile
        # keep-last-10 reader lost the first frames' Actions that way (CI heard 6 of 20).
        self.node.create_subscription(Action, 'action', self.on_action, qos.action_reader(self.lockstep))
        return self.node

    def on_action(self, msg) -> None:
        received = time.time()
        self.count += 1
        self.by_action[msg.action] += 1
        self.by_trigger[msg.trigger] += 1
        if msg.trigger in PER_FRAME_TRIGGERS:   # a failsafe repeats while stale: not a sign of progress
            self.last_at = time.monotonic()
        if msg.trigger not in NOT_EMBEDDED:     # kept and failsafe Actions have no stage latencies
            for key, window in self.latency.items():
                window.add(getattr(msg, key))
            for key, (earlier, later) in HOPS.items():
                self.hops[key].add(ms_between(getattr(msg.times, earlier), getattr(msg.times, later)))
            self.hops[OVERHEAD].add(msg.capture_to_decide_ms - msg.embed_ms)
            self.hops[DELIVERED].add((received - to_seconds(msg.times.decided)) * 1000.0)
        if self.changes_only and not msg.changed:
            return
        media = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        score = '   -  ' if math.isnan(msg.score) else f'{msg.score:6.3f}'
        mark = '*' if msg.changed else ' '
        self.out.write(f'{media:7.2f}s {mark}{msg.action:<16} {msg.trigger:<9} score {score}  '
                       f'latency {msg.capture_to_decide_ms:6.1f} ms'
                       f'  #{msg.frame_sequence:<4} {msg.matched_prompt!r}\n')
        self.out.flush()


def summary(c: dict, e: dict, printer: ActionPrinter) -> str:
    lines = ['', 'summary',
             f"  frames captured {c['captured']}  published {c['published']}  gated {c['gated']}  "
             f"rate-skipped {c['rate_skipped']}  dropped at capture {c['dropped']}",
             f"  frames embedded {e['embedded']}  dropped before embedding {e['dropped']}  lost {e['lost']}",
             f"  actions {printer.count}: " + ', '.join(f'{k} {v}' for k, v in printer.by_action.most_common()),
             '  by trigger: ' + ', '.join(f'{k} {v}' for k, v in printer.by_trigger.most_common()),
             '  latencies of decided (embedded) frames:']
    for key, window in printer.latency.items():
        lines.append(f'  {key:<22} p50 {window.percentile(50):7.1f} ms  p99 {window.percentile(99):7.1f} ms')
    return '\n'.join(lines) + '\n'


def demo_overrides(args) -> dict:
    overrides = pipeline.collect_overrides(args, composed=True)
    for node, params in DEMO_OVERRIDES.items():
        for key, value in params.items():
            overrides[node].setdefault(key, value)
    return overrides


def run(args, printer: ActionPrinter, timeout: float) -> tuple[dict, dict, str]:
    """Run the composed pipeline in this process until the source ends and the last Action is in, or a stop
    (Ctrl-C, SIGTERM). Returns the camera's and the embedder's counters and the stop's reason ('' at the end
    of the file)."""
    import rclpy
    from ..nodes.lifecycle import bring_up
    from ..nodes.process_stop import StartupInterrupted
    from ..nodes.runtime import init_ros, release, spin_each_node
    stop = init_ros(pipeline.ros_args_for(args), stop_with_parent=False)
    nodes, executors = [], []
    counts = ({}, {})
    try:
        nodes = [printer.make_node()]   # first, so it hears the very first Action
        nodes += [factory() for factory in pipeline.node_factories(demo_overrides(args))]
        camera, embedder = nodes[1], nodes[2]
        counts = (camera.counts, embedder.counts)
        executors = spin_each_node(nodes)
        failed = bring_up(nodes[1:])       # downstream first, as launch's lifecycle_manager does
        if failed:
            raise RuntimeError(f'{failed} did not come up (see the log above for why)')
        stop.started()
        deadline = time.monotonic() + timeout
        # Done when the file has ended and the last Action has had time to come through.
        while time.monotonic() < deadline and not stop.requested.is_set():
            if camera.finished.wait(0.2) and time.monotonic() - printer.last_at > 2.0:
                break
    except StartupInterrupted:
        pass
    finally:
        if stop.requested.is_set():
            rclpy.logging.get_logger('vidaction_demo').info(f'stopping ({stop.reason})')
        release(stop, executors, nodes)
    return dict(counts[0]), dict(counts[1]), stop.reason if stop.requested.is_set() else ''


def require_composed(parser, args) -> None:
    """The demo (and bench/e2e.py) runs the nodes in this process, where it times and prints their Actions."""
    if args.mode != 'composed':
        parser.error(f'--mode {args.mode}: this runs the pipeline composed, in one process; for separate '
                     f'processes use vidaction_pipeline --mode processes (or bench/soak.py, which times them)')


def main(argv=None) -> int:
    parser = pipeline.build_parser('vidaction_demo')
    parser.add_argument('--changes-only', action='store_true', help='print only Actions that change the action')
    parser.add_argument('--timeout', type=float, default=600.0, help='give up after this many seconds')
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    require_composed(parser, args)
    printer = ActionPrinter(args.changes_only, lockstep=args.lockstep)
    sys.stdout.write('loading the model and starting the pipeline...\n')
    from ..nodes.runtime import STARTUP_ERRORS, exit_process
    try:
        camera, embedder, stopped_by = run(args, printer, args.timeout)
    except STARTUP_ERRORS as err:
        sys.stderr.write(f'vidaction_demo: {err}\n')
        exit_process(2)
    if camera:
        sys.stdout.write(summary(camera, embedder, printer))
    # A stop asked for (Ctrl-C, SIGTERM) is a clean end; otherwise the run must have decided something.
    exit_process(0 if stopped_by or printer.count > 0 else 1)   # see exit_process: teardown at exit aborts


if __name__ == '__main__':
    raise SystemExit(main())
