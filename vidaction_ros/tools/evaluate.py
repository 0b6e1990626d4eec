"""vidaction-eval: replay a rosbag2 bag through the real pipeline, deterministically, and report what fired.

    vidaction-eval BAG [--labels labels.yaml] [--out DIR] [--policy-file P] [--set NODE.PARAM=VALUE ...]
                   [--mode composed|processes] [--action NAME ...] [--before-s 1.0] [--after-s 2.0]
                   [--max-delay-s S]

1. Runs `vidaction_pipeline --lockstep --source BAG` (the four real nodes; composed in one child process by
   default, frames by reference; `--mode processes` runs four processes as `vidaction.launch.py` does):
   every frame of the bag's image topic is processed in order and stamped with its header stamp (message
   time), so two runs decide identically and the stamps line up with labels.
2. Records every Action with a real rclpy subscriber (the camera waits for it: lockstep_action_subscribers
   = 2), and every MemoryContext, from which a PolicyEngine over the same policy file and the same text
   model re-scores each rule on each frame (the Action carries only the deciding rule's score; the
   timeline shows every rule's). The re-scored decision is checked against the Action received.
3. Writes DIR/actions/ (rosbag2, MCAP by default): the Action stream, bag time = header stamp, our Action
   type registered from the installed .msg files; DIR/timeline.png; DIR/report.json; DIR/report.md;
   DIR/report.html (open it in a browser: timeline, events, a thumbnail with the overlay for every onset, miss
   and false alarm in DIR/thumbs/, latency); DIR/pipeline.log.

Metrics (vidaction_ros.tools.eval_metrics, which documents the matching rules): latency percentiles per stage
from the Actions' fields and, with labels, per evaluated action: event-level precision, recall, F1, lead
time (labelled start - first firing), false alarms, plus frame-level counts. Which action the labels are
about: --action, else the labels file's `action:`, else the policy's highest-priority rule.

DDS stays on this machine unless you say otherwise: ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and a
ROS_DOMAIN_ID from the process id are set when unset (as scripts/env.sh does).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .action_bags import EvalError, write_action_bag
from .eval_metrics import Labels, Tolerances, load_labels
from .eval_report import build_report, choose_actions, per_frame, plot_timeline, report_markdown
from .replay import RunOptions, _stamp_ns, pipeline_argv, policy_params, rescore, run_replay


@dataclass
class EvalResult:
    report: dict
    files: dict
    actions: list = field(default_factory=list)


def evaluate(bag: str, out_dir: str | Path, labels: Labels | None = None, actions: Sequence[str] | None = None,
             tol: Tolerances = Tolerances(), opts: RunOptions = RunOptions(), storage: str = 'mcap',
             force: bool = False) -> EvalResult:
    """Replay `bag`, write the Action bag, timeline.png, report.json, report.md and report.html (with thumbs/)
    into `out_dir`."""
    from rclpy.serialization import serialize_message
    from .eval_html import eval_page, moments, thumbnails
    from ..paths import resolve_policy_file
    from ..policy import load_policy

    out = Path(out_dir)
    bag_out = out / 'actions'
    if bag_out.exists():
        if not force:
            raise EvalError(f'{bag_out} exists already (rosbag2 bags are never overwritten); use --force or '
                            f'another --out')
        shutil.rmtree(bag_out)
    out.mkdir(parents=True, exist_ok=True)
    argv = pipeline_argv(bag, opts)
    params = policy_params(argv)
    spec = load_policy(resolve_policy_file(params.get('policy_file', '')))
    evaluated = choose_actions(spec, labels, actions)

    record = run_replay(bag, out, opts)
    # The recording first: whatever the report makes of it, the Action stream is kept.
    write_action_bag(bag_out, [(_stamp_ns(a), bytes(serialize_message(a))) for a in record.actions], storage)
    files = {'actions_bag': str(bag_out), 'report_json': str(out / 'report.json'),
             'report_md': str(out / 'report.md'), 'timeline': str(out / 'timeline.png'),
             'pipeline_log': str(record.log)}
    rescored = rescore(record.contexts, spec, params) if opts.rescore else None
    report = build_report(record, spec, bag, labels, evaluated, tol, rescored, opts)
    report['actions_bag_count'] = len(record.actions)
    frames, _ = per_frame(record.actions)
    plot_timeline(Path(files['timeline']), frames, spec, evaluated, labels, rescored, report)
    # The page a person opens: every onset, miss and false alarm as a thumbnail with the overlay drawn on it.
    regions = {name: region.polygon for name, region in spec.regions.items()}
    report['thumbnails'] = thumbnails(bag, frames, moments(report), regions, out)
    files['report_html'] = str(out / 'report.html')
    Path(files['report_html']).write_text(eval_page(_clean(report), report['thumbnails']), encoding='utf-8')
    report['files'] = files
    Path(files['report_json']).write_text(json.dumps(_clean(report), indent=1) + '\n', encoding='utf-8')
    Path(files['report_md']).write_text(report_markdown(report, files), encoding='utf-8')
    return EvalResult(report, files, record.actions)


def _clean(value):
    """JSON has no NaN: not-measured values become null."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _clean(value.item())
    return value


# -- command line ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='vidaction-eval', description='Replay a rosbag2 bag through the pipeline '
                                '(lock-step: every frame, header stamps) and report what fired, when, and how fast.')
    p.add_argument('bag', help='rosbag2 bag (directory, .mcap or .db3) with one image topic (or --bag-topic)')
    p.add_argument('--labels', help='labels YAML (spans in media time; test/data/vtest_near_zone_labels.yaml format)')
    p.add_argument('--out', help='output directory (default ./eval_<bag name>)')
    p.add_argument('--policy-file', default='', help='policy YAML (default: the package\'s config/policy.yaml)')
    p.add_argument('--params-file', default='', help='ros2 params file (default: config/vidaction.yaml)')
    p.add_argument('--set', action='append', default=[], metavar='NODE.PARAM=VALUE',
                   help='override a node parameter, as vidaction_pipeline --set (repeatable)')
    p.add_argument('--mode', choices=('composed', 'processes'), default='composed',
                   help='one composed process, frames by reference (default: the lightest on a small machine), '
                   'or four node processes as vidaction.launch.py runs them')
    p.add_argument('--bag-topic', help='image topic of a bag with several')
    p.add_argument('--action', action='append', default=[], help='action to evaluate against the labels '
                   '(repeatable; default: the labels\' action:, else the highest-priority rule)')
    p.add_argument('--before-s', type=float, default=1.0, help='a firing this early before a labelled start '
                   'still counts as a detection (default 1.0)')
    p.add_argument('--after-s', type=float, default=2.0, help='still active this long after a span ends is not '
                   'a false alarm (default 2.0: covers min_hold_s)')
    p.add_argument('--max-delay-s', type=float, help='a first firing later than start + this is a miss '
                   '(default: anywhere before the span ends)')
    p.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap', help='output bag storage')
    p.add_argument('--settle-s', type=float, default=2.0, help='DDS settle time before the first frame (default 2)')
    p.add_argument('--timeout-s', type=float, default=120.0, help='give up when no Action arrives for this long '
                   'after the first (default 120; the first may take up to 600 s: model load)')
    p.add_argument('--no-rescore', action='store_true', help='do not re-score every rule on every frame '
                   '(the timeline then shows only the deciding rule\'s score)')
    p.add_argument('--force', action='store_true', help='replace OUT/actions if it exists')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Ctrl-C or SIGTERM: the pipeline child is stopped in order (run_replay's finally), a second signal is
    # absorbed, and the command ends with one line and exit 0, no traceback.
    from ..nodes.process_stop import StartupInterrupted, install
    stop = install(stop_with_parent=False)
    from ..ingest.bags import is_bag_path
    from .eval_metrics import LabelsError
    from ..policy import PolicyError
    if not is_bag_path(args.bag):
        sys.stderr.write(f'vidaction-eval: {args.bag} is not a rosbag2 bag (a directory with metadata.yaml, '
                         f'or a .mcap / .db3 file)\n')
        return 2
    out = args.out or f'eval_{Path(args.bag.rstrip("/")).stem}'
    try:
        labels = load_labels(args.labels) if args.labels else None
        tol = Tolerances(args.before_s, args.after_s, args.max_delay_s)
        opts = RunOptions(mode=args.mode, policy_file=args.policy_file, params_file=args.params_file,
                          sets=args.set, bag_topic=args.bag_topic, settle_s=args.settle_s,
                          stall_timeout_s=args.timeout_s, rescore=not args.no_rescore, progress=not args.quiet)
        result = evaluate(args.bag, out, labels, args.action, tol, opts, args.storage, args.force)
    except (LabelsError, PolicyError, ValueError, OSError) as err:   # the user's input: labels, policy, paths
        sys.stderr.write(f'vidaction-eval: {err}\n')
        return 2
    except EvalError as err:                                          # the run itself went wrong
        sys.stderr.write(f'vidaction-eval: {err}\n')
        return 1
    except StartupInterrupted:
        sys.stderr.write(f'vidaction-eval: stopped ({stop.reason}); no report written\n')
        return 0
    sys.stdout.write(report_markdown(result.report, result.files))
    return 0 if result.report['stream']['complete'] else 1


if __name__ == '__main__':
    raise SystemExit(main())
