"""vidaction-calibrate: run the model over a video or bag, plot every prompt's score over time and suggest
thresholds for the policy file.

    vidaction-calibrate SOURCE [--policy-file P] [--labels L.yaml] [--out DIR] [--step N | --rate HZ]
                        [--start-s S] [--end-s S] [--rule NAME ...] [--criterion youden|f1]
                        [--max-fpr 0.01] [--quantile 99.5] [--margin 0.05] [--hysteresis H]

No ROS: the backend runs in this process. Frames are downscaled to the camera's working resolution and
stamped with media time (a video: frame index / fps; a bag: the header stamp), as the lock-step pipeline
does, so the scores here are the scores the policy node computes in replay.

Scores come from `PolicyEngine` itself, never from a re-implementation:
  * a rule's score is `Decision.scores[rule]` of an engine over the policy file;
  * a prompt's score is the rule's score with that prompt as the rule's only positive prompt (an engine
    over a copy of the policy with just that prompt): for `margin` rules the rule's score is the maximum of
    its prompts' scores; for `softmax` rules the rule's score is the softmax mass of all its prompts.
  * memory (temporal) rules get the similarity to the scene `lookback_s` ago from a `TemporalMemory`,
    filled as the memory node fills it.

Thresholds, per rule (a prompt rule fires at score >= enter and stays while score >= exit; a memory rule
fires at similarity < below_similarity and stays while < exit_similarity, so everything is mirrored):
  * with --labels (spans in media time, test/data/vtest_near_zone_labels.yaml format): frames inside a span
    are positive, frames in an `ambiguous` span are ignored, the rest negative. `enter` is the threshold
    maximising a frame-level criterion, Youden's J = TPR - FPR (default) or F1, among the thresholds that
    fire on at most --max-fpr (default 1 %) of the negative frames; among equally good thresholds, the
    middle of the widest gap between neighbouring scores (the largest margin to both sides).
    Why the FPR limit: labels say where the event is, not what the model can see. On the bundled video a
    third of the labelled frames show people the detector cannot see yet (walking in across the image
    edge), scoring like the empty lawn; unconstrained, J picks enter 0.034 (24 of 280 empty-lawn frames
    fire) and F1 on the committed bag picks -0.024 (16 of 21 fire). With the limit both criteria agree:
    0.312 / exit 0.192 on the whole video at --rate 5 (the hand-set policy has 0.30 / 0.20), 0.34 / 0.223
    on the committed bag.
  * without labels, the clip is taken as "normal" (nothing should fire): enter = the `quantile`-th
    percentile of the normal scores + `margin`.
  * exit = enter - hysteresis. Unless --hysteresis is given, it is half the distance from enter down to the
    normal scores' `quantile`-th percentile (labelled negatives, or the whole normal clip): a frame that
    looks normal releases the rule, a score that merely dips below enter does not.
Per-frame thresholds ignore min_hold_s and cooldown_s; `vidaction-eval` measures the whole decision chain.

Writes to --out: scores.csv (one row per frame: time, sequence, decided action, each rule's and each
prompt's score), scores.json (the same plus the suggestions), calibration.png and suggestion.yaml; prints
the suggestion as a YAML snippet to paste into the policy file.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .eval_metrics import Labels, frame_labels, load_labels
from .score_trace import Trace, frame_count, trace_source, write_csv
from .thresholds import (CRITERIA, DEFAULT_MARGIN, DEFAULT_MAX_FPR, DEFAULT_QUANTILE, Suggestion, choose_rules,
                         suggest_from_labels, suggest_from_normal, suggestion_yaml)
from ..policy import PolicySpec, PromptRule


# -- outputs ---------------------------------------------------------------------------------------------------
def _json_num(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def plot(trace: Trace, spec: PolicySpec, suggestions: dict[str, Suggestion], path: Path,
         labels: Labels | None = None) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rules = list(spec.rules)
    t = trace.times
    fig, axes = plt.subplots(len(rules), 1, figsize=(14, 3.2 * len(rules) + 0.6), sharex=True, squeeze=False)
    for ax, rule in zip(axes[:, 0], rules):
        if labels is not None:
            for i, s in enumerate(labels.spans):
                ax.axvspan(s.start, s.end, color='tab:green', alpha=0.12, label='labelled span' if i == 0 else None)
            for i, s in enumerate(labels.ambiguous):
                ax.axvspan(s.start, s.end, color='0.6', alpha=0.25, hatch='//', label='ambiguous' if i == 0 else None)
        # The rule's score underneath, wide and light: for a margin rule it coincides with its best prompt.
        ax.plot(t, trace.rule_scores(rule.name), color='0.55', lw=4.0, alpha=0.6, label=f'{rule.name} score')
        if isinstance(rule, PromptRule):
            for p in rule.prompts:
                ax.plot(t, trace.prompt_scores(rule.name, p), lw=0.9, alpha=0.75, label=f'prompt: {_short(p)}')
            enter, exit_ = rule.enter, rule.exit
            ax.set_ylabel(f'{rule.score} score')
        else:
            enter, exit_ = rule.below_similarity, rule.exit_similarity
            ax.set_ylabel(f'similarity to {rule.lookback_s:g} s ago')
        ax.axhline(enter, color='tab:red', lw=1.2, label=f'current enter {enter:g}')
        if exit_ != enter:
            ax.axhline(exit_, color='tab:red', lw=1.0, ls=':', label=f'current exit {exit_:g}')
        s = suggestions.get(rule.name)
        if s is not None:
            ax.axhline(s.enter, color='tab:blue', lw=1.2, ls='--', label=f'suggested enter {s.enter:g}')
            ax.axhline(s.exit, color='tab:blue', lw=1.0, ls='-.', label=f'suggested exit {s.exit:g}')
        decided = np.array([f.action == rule.name for f in trace.frames])
        if decided.any():
            lo = ax.get_ylim()[0]
            ax.plot(t[decided], np.full(decided.sum(), lo), '|', color='tab:red', ms=10,
                    label=f'{rule.name} decided (current policy)')
        ax.set_title(f'{rule.name} ({"region " + rule.region if getattr(rule, "region", "") else "full frame"})'
                     if isinstance(rule, PromptRule) else f'{rule.name} (memory rule)', fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    pad = max(0.5, 0.01 * (t[-1] - t[0]))
    axes[-1, 0].set_xlim(t[0] - pad, t[-1] + pad)
    axes[-1, 0].set_xlabel('media time [s]')
    fig.suptitle(f'{Path(trace.source).name}: scores per frame ({trace.model})', fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _short(text: str, n: int = 45) -> str:
    return text if len(text) <= n else text[:n - 3] + '...'


@dataclass
class CalibrationResult:
    trace: Trace
    suggestions: list[Suggestion]
    yaml: str
    files: dict[str, str]


def calibrate(trace: Trace, out_dir: str | Path, labels: Labels | None = None,
              rules: Sequence[str] | None = None, criterion: str = 'youden', quantile: float = DEFAULT_QUANTILE,
              margin: float = DEFAULT_MARGIN, hysteresis: float | None = None,
              max_fpr: float | None = DEFAULT_MAX_FPR) -> CalibrationResult:
    """Suggest thresholds from a trace and write scores.csv, scores.json, calibration.png, suggestion.yaml and
    report.html (the plot and the suggestion on one page)."""
    spec = trace.spec
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_name = {r.name: r for r in spec.rules}
    chosen = choose_rules(spec, labels, rules)
    t = trace.times
    suggestions = []
    y = frame_labels(t, labels.spans, labels.ambiguous) if labels is not None else None
    for name in chosen:
        rule, scores = by_name[name], trace.rule_scores(name)
        if labels is not None:
            suggestions.append(suggest_from_labels(rule, scores, y, criterion, hysteresis, quantile, max_fpr))
        else:
            suggestions.append(suggest_from_normal(rule, scores, quantile, margin, hysteresis))
    how = (f'labels {labels.source}, best {criterion} at frame FPR <= {max_fpr:g}' if labels is not None
           else f'unlabelled normal clip, p{quantile:g} + margin {margin:g}')
    header = (f'vidaction-calibrate: thresholds for {spec.source}\n'
              f'from {trace.source} ({len(trace.frames)} frames, {trace.model}; {how})')
    text = suggestion_yaml(suggestions, header)
    files = {'csv': str(out / 'scores.csv'), 'json': str(out / 'scores.json'),
             'png': str(out / 'calibration.png'), 'yaml': str(out / 'suggestion.yaml')}
    write_csv(trace, Path(files['csv']))
    doc = {
        'source': trace.source, 'policy': spec.source, 'model': trace.model, 'frames': len(trace.frames),
        'labels': labels.source if labels is not None else None, 'criterion': criterion if labels else None,
        'max_fpr': max_fpr if labels else None,
        'quantile': quantile, 'margin': None if labels else margin, 'hysteresis': hysteresis,
        'rules': {r.name: _rule_doc(r) for r in spec.rules},
        'suggestions': [_clean(s.as_dict()) for s in suggestions],
        'series': {'time_s': t.tolist(), 'sequence': [f.sequence for f in trace.frames],
                   'action': [f.action for f in trace.frames],
                   'scores': {r.name: [_json_num(x) for x in trace.rule_scores(r.name).tolist()] for r in spec.rules},
                   'prompts': {r.name: {p: [_json_num(x) for x in trace.prompt_scores(r.name, p).tolist()]
                                        for p in r.prompts} for r in spec.actions}},
    }
    Path(files['json']).write_text(json.dumps(doc, indent=1) + '\n', encoding='utf-8')
    Path(files['yaml']).write_text(text, encoding='utf-8')
    plot(trace, spec, {s.rule: s for s in suggestions}, Path(files['png']), labels)
    from .eval_html import calibrate_page
    files['html'] = str(out / 'report.html')
    Path(files['html']).write_text(calibrate_page(text, files), encoding='utf-8')
    return CalibrationResult(trace, suggestions, text, files)


def _rule_doc(rule) -> dict:
    if isinstance(rule, PromptRule):
        return {'kind': 'prompt', 'score': rule.score, 'region': rule.region, 'prompts': list(rule.prompts),
                'enter': rule.enter, 'exit': rule.exit}
    return {'kind': 'temporal', 'lookback_s': rule.lookback_s, 'below_similarity': rule.below_similarity,
            'exit_similarity': rule.exit_similarity}


def _clean(value):
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return _json_num(value)


# -- command line ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from ..perception.backends import CHOICES
    p = argparse.ArgumentParser(
        prog='vidaction-calibrate',
        description='Score a video or rosbag2 bag with the policy\'s prompts, plot the scores over time and '
                    'suggest enter/exit thresholds (from labelled spans, or from a normal clip).')
    p.add_argument('source', help='video file or rosbag2 bag (directory, .mcap or .db3)')
    p.add_argument('--policy-file', default='', help='policy YAML (default: the package\'s config/policy.yaml)')
    p.add_argument('--labels', help='labels YAML with spans in media time (test/data/vtest_near_zone_labels.yaml '
                   'format); without it the clip is taken as normal (nothing should fire)')
    p.add_argument('--out', default='calibration', help='output directory (default ./calibration)')
    p.add_argument('--rule', action='append', default=[], help='calibrate this rule (repeatable; default: the '
                   'labels\' action or the highest-priority rule with --labels, every rule without)')
    p.add_argument('--step', type=int, default=1, help='use every N-th frame (default 1)')
    p.add_argument('--rate', type=float, help='use at most this many frames per second of media time')
    p.add_argument('--start-s', type=float, help='first media time to use, seconds')
    p.add_argument('--end-s', type=float, help='media time to stop before, seconds')
    p.add_argument('--bag-topic', help='image topic of a bag with several')
    p.add_argument('--criterion', choices=CRITERIA, default='youden', help='with --labels: Youden\'s J = TPR - FPR '
                   '(default; insensitive to how many labelled frames are positive) or frame-level F1')
    p.add_argument('--max-fpr', type=float, default=DEFAULT_MAX_FPR,
                   help=f'with --labels: the suggested enter may fire on at most this fraction of the labelled '
                   f'negative frames (default {DEFAULT_MAX_FPR:g}; 1 = no limit)')
    p.add_argument('--quantile', type=float, default=DEFAULT_QUANTILE,
                   help=f'percentile of the normal scores (default {DEFAULT_QUANTILE:g})')
    p.add_argument('--margin', type=float, default=DEFAULT_MARGIN,
                   help=f'without labels: enter = normal percentile + this (default {DEFAULT_MARGIN:g})')
    p.add_argument('--hysteresis', type=float, help='exit = enter - this (default: half-way from enter to the '
                   'normal percentile)')
    p.add_argument('--backend', choices=CHOICES, default='cpu', help='embedding backend (default cpu)')
    p.add_argument('--model-path', default='', help='model directory for the CLIP-style backends')
    p.add_argument('--device', default='', help='cpu or cuda for the CLIP-style backends')
    p.add_argument('--precision', default='', help='backend precision (torch_cuda / tensorrt)')
    p.add_argument('--threads', type=int, default=1, help='CPU threads of the model runtime (default 1)')
    p.add_argument('--max-width', type=int, default=640, help='working resolution, as the camera (default 640)')
    p.add_argument('--max-height', type=int, default=480, help='working resolution height (default 480)')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..perception.backends import BackendUnavailable, create_backend
    from ..paths import resolve_policy_file
    from ..policy import PolicyError, load_policy
    from .progress import Progress
    from .eval_metrics import LabelsError
    try:
        spec = load_policy(resolve_policy_file(args.policy_file))
        labels = load_labels(args.labels) if args.labels else None
        choose_rules(spec, labels, args.rule)            # fail on a bad --rule before loading the model
        if args.rate is not None and not args.rate > 0:
            raise ValueError(f'--rate must be > 0, got {args.rate}')
        backend = create_backend(args.backend, model_path=args.model_path, device=args.device,
                                 precision=args.precision, threads=args.threads)
        backend.activate()
    except (PolicyError, LabelsError, BackendUnavailable, ValueError) as err:
        sys.stderr.write(f'vidaction-calibrate: {err}\n')
        return 2
    total = frame_count(args.source, args.bag_topic)
    bar = Progress(total, desc='scoring', enabled=not args.quiet)
    try:
        trace = trace_source(args.source, spec, backend, step=args.step, rate_hz=args.rate, start_s=args.start_s,
                             end_s=args.end_s, max_width=args.max_width, max_height=args.max_height,
                             bag_topic=args.bag_topic, progress=lambda n, index: bar.update(index + 1))
        bar.update(total or 0)
        bar.close()
        result = calibrate(trace, args.out, labels, args.rule, args.criterion, args.quantile, args.margin,
                           args.hysteresis, args.max_fpr)
    except Exception as err:   # a source that cannot be read, a label set with one class: say what, exit 2
        bar.close()
        from ..ingest.bags import BagError
        from ..ingest.frame_source import SourceError
        if isinstance(err, (ValueError, SourceError, BagError, OSError)):
            sys.stderr.write(f'vidaction-calibrate: {err}\n')
            return 2
        raise
    finally:
        backend.deactivate()
    sys.stdout.write(result.yaml)
    sys.stderr.write('wrote ' + ', '.join(result.files.values()) + '\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
