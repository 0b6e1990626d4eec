#!/usr/bin/env python3
"""Decision quality on real footage: every case of the suite replayed through `vidaction-eval`, one table.

    python bench/quality.py [--cases a,b] [--split tune|holdout|all] [--json PATH] [--work-dir DIR]
    python bench/quality.py --calibrate          # suggest the shared thresholds from the tune cases

The suite (bench/quality_suite/suite.yaml) lists the cases: a real clip (a file shipped by a registry
package, never downloaded), the policy a user would write for that camera, and labels made by eye (each
labels file says how). Every case is made into a bag with `vidaction-bag from-video`'s writer (cached under
--work-dir) and replayed in lock-step, so each frame is decided once, in order, at media time.

Thresholds are shared, not tuned per clip: each case's rules get the suite's `thresholds` (enter / exit by
score kind) before the replay. `--calibrate` runs `vidaction-calibrate` on the cases of the `tune` split and
prints each rule's suggestion and their median, the value to put into suite.yaml; the `holdout` cases are
then reported separately, as clips the thresholds never saw.

Columns, per case (event rules of tools/eval_metrics.py): event precision and recall, mean lead time
(labelled start - first firing; negative = late), toggles (onsets after the first inside labelled spans),
mean frame recall after the first firing, mean release delay (release - labelled end), frames decided.
Targets (issue 15): precision >= 0.9, recall >= 0.9, <= 1 toggle per span. --json writes every number.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SUITE = REPO / 'bench' / 'quality_suite' / 'suite.yaml'
TARGETS = {'precision': 0.9, 'recall': 0.9, 'toggles_per_span': 1}
SPLITS = ('tune', 'holdout', 'all')


def load_suite(path: Path = SUITE) -> dict:
    suite = yaml.safe_load(path.read_text())
    for case in suite['cases']:
        for key in ('name', 'clip', 'policy', 'labels', 'split'):
            if key not in case:
                raise SystemExit(f'{path}: case {case.get("name", "?")!r} has no {key!r}')
        if case['split'] not in ('tune', 'holdout'):
            raise SystemExit(f'{path}: case {case["name"]!r}: split must be tune or holdout')
    return suite


def clip_path(clip: dict) -> Path:
    """The clip file: a path (a Debian package's file) or a file inside an installed Python package."""
    if 'path' in clip:
        path = Path(clip['path'])
    else:
        import importlib.util
        spec = importlib.util.find_spec(clip['python_package'])
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"clip package {clip['python_package']!r} is not installed "
                             f"({clip.get('install', 'see suite.yaml')})")
        path = Path(list(spec.submodule_search_locations)[0]) / clip['file']
    if not path.is_file():
        raise SystemExit(f'clip not found: {path} ({clip.get("install", "see suite.yaml")})')
    return path


def make_bag(case: dict, work: Path) -> Path:
    """The case's bag, written once per clip and options (cached by their hash)."""
    from vidaction_ros.tools.bag_writer import VideoToBag, write_video_bag
    video = clip_path(case['clip'])
    options = dict(case.get('bag') or {})
    key = hashlib.sha256(json.dumps([str(video), video.stat().st_size, options], sort_keys=True).encode())
    bag = work / 'bags' / f"{case['name']}-{key.hexdigest()[:12]}"
    if not bag.exists():
        bag.parent.mkdir(parents=True, exist_ok=True)
        write_video_bag(str(video), str(bag), VideoToBag(**options))
    return bag


def shared_policy(case: dict, thresholds: dict, work: Path) -> Path:
    """The case's policy with the suite's shared enter / exit put into every prompt rule."""
    data = yaml.safe_load((SUITE.parent / case['policy']).read_text())
    for rule in data.get('actions') or []:
        kind = rule.get('score', 'margin')
        if kind in thresholds:
            rule['enter'], rule['exit'] = thresholds[kind]['enter'], thresholds[kind]['exit']
    out = work / 'policies' / f"{case['name']}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def run_module(module: str, args: list[str], log: Path) -> None:
    with open(log, 'w') as f:
        proc = subprocess.run([sys.executable, '-m', module, *args], stdout=f, stderr=subprocess.STDOUT,
                              cwd=tempfile.gettempdir())
    if proc.returncode != 0:
        raise SystemExit(f'{module} failed ({proc.returncode}); log: {log}\n' + log.read_text()[-2000:])


def evaluate(case: dict, thresholds: dict, work: Path) -> dict:
    bag = make_bag(case, work)
    out = work / 'eval' / case['name']
    args = [str(bag), '--policy-file', str(shared_policy(case, thresholds, work)),
            '--labels', str(SUITE.parent / case['labels']), '--out', str(out), '--force', '--quiet']
    if case.get('action'):
        args += ['--action', case['action']]
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    run_module('vidaction_ros.tools.evaluate', args, out / 'eval.log')
    report = json.loads((out / 'report.json').read_text())
    return summarise(case, report, time.monotonic() - started)


def summarise(case: dict, report: dict, wall_s: float) -> dict:
    name = case.get('action') or next(iter(report['events']))
    ev = report['events'][name]
    spans = [s for s in ev['spans'] if s['evaluated']]
    detected = [s for s in spans if s['detected']]

    def mean(values):
        values = [v for v in values if v is not None]
        return statistics.fmean(values) if values else None

    max_toggles = max((s.get('toggles', 0) for s in detected), default=0)
    meets = (ev['precision'] is not None and ev['precision'] >= TARGETS['precision'] and ev['recall'] is not None
             and ev['recall'] >= TARGETS['recall'] and max_toggles <= TARGETS['toggles_per_span'])
    return {'case': case['name'], 'split': case['split'], 'action': name, 'clip': case['clip'].get('what', ''),
            'spans': len(spans), 'precision': ev['precision'], 'recall': ev['recall'], 'tp': ev['tp'],
            'fp': ev['fp'], 'fn': ev['fn'], 'lead_s': (ev['lead_time_s'] or {}).get('mean'),
            'toggles': sum(s.get('toggles', 0) for s in detected), 'max_toggles_per_span': max_toggles,
            'frame_recall_after_first': mean(s.get('frame_recall_after_first') for s in detected),
            'release_delay_s': mean(s.get('release_delay_s') for s in detected),
            'frames': report['stream']['frames_decided'], 'wall_s': wall_s, 'meets_targets': meets}


def calibrate(cases: list[dict], work: Path) -> dict:
    """vidaction-calibrate on each tune case; the median suggestion per score kind is the shared value."""
    by_kind: dict[str, list[tuple[float, float]]] = {}
    rows = []
    for case in cases:
        bag = make_bag(case, work)
        out = work / 'calibrate' / case['name']
        out.mkdir(parents=True, exist_ok=True)
        run_module('vidaction_ros.tools.calibrate',
                   [str(bag), '--policy-file', str(SUITE.parent / case['policy']),
                    '--labels', str(SUITE.parent / case['labels']), '--out', str(out), '--quiet'],
                   out / 'calibrate.log')
        suggestion = yaml.safe_load((out / 'suggestion.yaml').read_text()) or {}
        policy = yaml.safe_load((SUITE.parent / case['policy']).read_text())
        kinds = {r['name']: r.get('score', 'margin') for r in policy.get('actions') or []}
        for rule in suggestion.get('actions') or []:
            kind = kinds.get(rule['name'], 'margin')
            by_kind.setdefault(kind, []).append((rule['enter'], rule['exit']))
            rows.append({'case': case['name'], 'rule': rule['name'], 'kind': kind, 'enter': rule['enter'],
                         'exit': rule['exit']})
    shared = {kind: {'enter': round(statistics.median(e for e, _ in pairs), 3),
                     'exit': round(statistics.median(x for _, x in pairs), 3)} for kind, pairs in by_kind.items()}
    return {'suggestions': rows, 'shared': shared}


def _fmt(v, spec='.2f') -> str:
    return '–' if v is None else format(v, spec)


def table(rows: list[dict]) -> str:
    head = (f"{'case':<26}{'split':<9}{'action':<11}{'spans':>6}{'prec':>7}{'recall':>8}{'lead s':>8}"
            f"{'toggles':>9}{'frame rec':>11}{'release s':>11}{'frames':>8}  targets")
    lines = [head, '-' * len(head)]
    for r in rows:
        lines.append(f"{r['case']:<26}{r['split']:<9}{r['action']:<11}{r['spans']:>6}{_fmt(r['precision']):>7}"
                     f"{_fmt(r['recall']):>8}{_fmt(r['lead_s'], '+.2f'):>8}{r['toggles']:>9}"
                     f"{_fmt(r['frame_recall_after_first']):>11}{_fmt(r['release_delay_s'], '+.2f'):>11}"
                     f"{r['frames']:>8}  {'met' if r['meets_targets'] else 'MISSED'}")
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser('bench/quality.py', description=__doc__.split('\n')[0])
    parser.add_argument('--cases', default='', help='comma-separated case names (default: all)')
    parser.add_argument('--split', choices=SPLITS, default='all', help='which cases to run (default all)')
    parser.add_argument('--calibrate', action='store_true',
                        help='suggest the shared thresholds from the tune cases (vidaction-calibrate) and stop')
    parser.add_argument('--work-dir', default=os.path.join(tempfile.gettempdir(), 'vidaction-quality'),
                        help='bags, policies and reports (bags are reused between runs)')
    parser.add_argument('--json', default='', help='write every number here')
    args = parser.parse_args(argv)
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    os.environ.setdefault('ROS_DOMAIN_ID', str(os.getpid() % 100 + 1))
    suite = load_suite()
    cases = suite['cases']
    if args.cases:
        wanted = set(args.cases.split(','))
        unknown = wanted - {c['name'] for c in cases}
        if unknown:
            parser.error(f'unknown case(s): {", ".join(sorted(unknown))}')
        cases = [c for c in cases if c['name'] in wanted]
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    if args.calibrate:
        result = calibrate([c for c in cases if c['split'] == 'tune'], work)
        for r in result['suggestions']:
            print(f"{r['case']:<26}{r['rule']:<14}{r['kind']:<8} enter {r['enter']:.3f}  exit {r['exit']:.3f}")
        print('shared (median of the tune cases):', json.dumps(result['shared']))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return 0
    if args.split != 'all':
        cases = [c for c in cases if c['split'] == args.split]
    rows = []
    for case in cases:
        print(f"[quality] {case['name']} ...", file=sys.stderr, flush=True)
        rows.append(evaluate(case, suite['thresholds'], work))
    rows.sort(key=lambda r: (r['split'] != 'tune', r['case']))
    print(f"thresholds (shared by every case): {json.dumps(suite['thresholds'])}")
    for split in ('tune', 'holdout'):
        part = [r for r in rows if r['split'] == split]
        if part:
            print(f'\n{split} cases' + (' (thresholds calibrated on these)' if split == 'tune'
                                        else ' (never used for tuning)'))
            print(table(part))
    if args.json:
        Path(args.json).write_text(json.dumps({'date': time.strftime('%Y-%m-%d'), 'command': 'python bench/quality.py '
                                               + ' '.join(argv if argv is not None else sys.argv[1:]),
                                               'thresholds': suite['thresholds'], 'targets': TARGETS,
                                               'results': rows}, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
