"""Threshold suggestions for vidaction-calibrate (pure): which rules to calibrate, enter/exit from labelled frames
(the best Youden's J or F1 under a false-positive limit) or from a normal clip (a quantile plus a margin), and
the YAML snippet for the policy file. calibrate.py documents the method.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .eval_metrics import IGNORED, POSITIVE, Labels, confusion
from ..policy import PolicySpec, TemporalRule

CRITERIA = ('f1', 'youden')
DEFAULT_QUANTILE = 99.5
DEFAULT_MARGIN = 0.05
DEFAULT_MAX_FPR = 0.01
DECIMALS = 3


# -- threshold suggestion (pure) --------------------------------------------------------------------------------
@dataclass
class Suggestion:
    rule: str
    kind: str                       # 'prompt' (fires at score >= enter) or 'temporal' (fires at score < enter)
    method: str                     # 'f1', 'youden' or 'quantile'
    enter: float                    # enter (prompt rule) or below_similarity (temporal rule)
    exit: float                     # exit (prompt rule) or exit_similarity (temporal rule)
    objective: float | None = None  # F1 / J at enter (labels), None for quantile
    normal_level: float | None = None   # the normal scores' `quantile`-th percentile (mirrored for memory rules)
    quantile: float = DEFAULT_QUANTILE
    frames: dict = field(default_factory=dict)     # frame confusion at the suggested enter (labels)
    current: dict = field(default_factory=dict)    # frame confusion at the policy file's enter (labels)
    note: str = ''

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _criterion(tp: np.ndarray, fp: np.ndarray, n_pos: int, n_neg: int, criterion: str) -> np.ndarray:
    if criterion == 'f1':
        fn = n_pos - tp
        den = 2 * tp + fp + fn
        return np.where(den > 0, 2 * tp / np.maximum(den, 1), 0.0)
    if criterion == 'youden':
        return tp / n_pos - fp / n_neg
    raise ValueError(f'criterion must be one of {CRITERIA}, got {criterion!r}')


def best_threshold(scores: Sequence[float], positive: Sequence[bool], criterion: str = 'youden',
                   max_fpr: float | None = None) -> tuple[float, float]:
    """(threshold, criterion value) for "fires when score >= threshold" maximising F1 or Youden's J, among the
    thresholds whose frame false-positive rate is at most `max_fpr` (None: no limit).

    Candidates lie between neighbouring distinct scores, below the lowest (fire on everything) and above the
    highest (fire on nothing, which always meets the FPR limit). Among the best, the widest gap wins and the
    threshold is its midpoint, so it sits as far as possible from both the highest score that should stay
    quiet and the lowest that should fire.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(positive, dtype=bool).reshape(-1)
    if s.size != y.size:
        raise ValueError(f'{s.size} scores but {y.size} labels')
    if max_fpr is not None and not (0.0 <= max_fpr <= 1.0):
        raise ValueError(f'max_fpr must be in [0, 1] or None, got {max_fpr!r}')
    keep = np.isfinite(s)
    s, y = s[keep], y[keep]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f'labelled thresholds need positive and negative frames, got {n_pos} positive and '
                         f'{n_neg} negative (with finite scores); label a clip that has both, or use the '
                         f'quantile mode on a normal clip')
    values = np.unique(s)                      # ascending, distinct
    # Candidate k < m fires on scores >= values[k]; candidate m fires on nothing. Counts from the top.
    pos_at = np.array([np.sum(y & (s == v)) for v in values] + [0])
    neg_at = np.array([np.sum(~y & (s == v)) for v in values] + [0])
    tp = np.cumsum(pos_at[::-1])[::-1]
    fp = np.cumsum(neg_at[::-1])[::-1]
    value = _criterion(tp, fp, n_pos, n_neg, criterion)
    allowed = np.ones(value.size, dtype=bool) if max_fpr is None else fp / n_neg <= max_fpr + 1e-12
    best = value[allowed].max()
    ties = np.flatnonzero(allowed & np.isclose(value, best, rtol=0, atol=1e-12))
    m = values.size
    # Gap below candidate k: values[k] - values[k-1]; the lowest and the "nothing" candidates count as gap 0.
    gaps = np.array([values[k] - values[k - 1] if 0 < k < m else 0.0 for k in ties])
    k = int(ties[int(np.argmax(gaps))])
    if k == m:
        threshold = float(values[-1]) + 10.0 ** -DECIMALS     # above every score (survives rounding)
    elif k == 0:
        threshold = float(values[0])
    else:
        threshold = (values[k] + values[k - 1]) / 2
    return float(threshold), float(best)


def _bounds(rule) -> tuple[float, float]:
    """The range a threshold of this rule must lie in (the policy file's validation)."""
    if isinstance(rule, TemporalRule):
        return -1.0, 1.0
    return (0.0, 1.0) if rule.score == 'softmax' else (-2.0, 2.0)


def _finish(enter: float, normal_level: float, hysteresis: float | None, bounds: tuple[float, float],
            decimals: int, lo_open: bool = False) -> tuple[float, float, float]:
    """Round enter, derive exit from the hysteresis (explicit, or half-way to the normal level), clamp both.
    Works in "fires when score >= enter" orientation; temporal rules are negated by the caller."""
    if hysteresis is None:
        hysteresis = max(0.0, (enter - normal_level) / 2.0)
    elif not (math.isfinite(hysteresis) and hysteresis >= 0):
        raise ValueError(f'hysteresis must be a finite number >= 0, got {hysteresis!r}')
    lo, hi = bounds
    enter = round(enter, decimals)
    exit_ = round(enter - hysteresis, decimals)
    enter = min(max(enter, lo), hi)
    if lo_open and enter <= lo:
        enter = lo + 10.0 ** -decimals      # margin > -2 and softmax > 0: the policy file refuses the bound itself
    exit_ = min(max(exit_, lo), enter)
    return enter, exit_, hysteresis


def _oriented(kind: str, x: np.ndarray | float):
    # A temporal rule fires when the similarity drops: negate, so "fires when value >= threshold" holds.
    return -x if kind == 'temporal' else x


def suggest_from_labels(rule, scores: Sequence[float], labels: Sequence[int], criterion: str = 'youden',
                        hysteresis: float | None = None, quantile: float = DEFAULT_QUANTILE,
                        max_fpr: float | None = DEFAULT_MAX_FPR, decimals: int = DECIMALS) -> Suggestion:
    """Thresholds for `rule` (a PromptRule or TemporalRule) from per-frame labels (eval_metrics.frame_labels):
    the best `criterion` among thresholds firing on at most `max_fpr` of the labelled-negative frames."""
    kind = 'temporal' if isinstance(rule, TemporalRule) else 'prompt'
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    keep = (y != IGNORED) & np.isfinite(s)
    o = _oriented(kind, s[keep])
    pos = y[keep] == POSITIVE
    thr, value = best_threshold(o, pos, criterion, max_fpr)
    normal = float(np.percentile(o[~pos], quantile))
    lo, hi = _bounds(rule)
    enter, exit_, h = _finish(thr, normal, hysteresis, (-hi, -lo) if kind == 'temporal' else (lo, hi), decimals,
                              lo_open=kind == 'prompt')
    sugg = Suggestion(rule.name, kind, criterion, float(_oriented(kind, enter)), float(_oriented(kind, exit_)),
                      objective=value, normal_level=float(_oriented(kind, normal)), quantile=quantile)
    # Frame counts at the suggested and at the current threshold, in the engine's own comparison.
    current = rule.below_similarity if kind == 'temporal' else rule.enter
    sugg.frames = confusion(_fires(kind, s, sugg.enter), y)
    sugg.current = {'enter': current, **confusion(_fires(kind, s, current), y)}
    notes = []
    if sugg.frames['tp'] == 0:
        notes.append(f'no threshold fires on a labelled frame while firing on at most {max_fpr:g} of the '
                     f'negatives: the model does not separate them (or relax --max-fpr)')
    elif h == 0:
        notes.append('no hysteresis band: the labelled negatives reach the suggested enter')
    sugg.note = '; '.join(notes)
    return sugg


def suggest_from_normal(rule, scores: Sequence[float], quantile: float = DEFAULT_QUANTILE,
                        margin: float = DEFAULT_MARGIN, hysteresis: float | None = None,
                        decimals: int = DECIMALS) -> Suggestion:
    """Thresholds from an unlabelled clip in which nothing should fire: enter = quantile of the clip + margin
    (for a memory rule: below_similarity = the (100 - quantile)-th percentile - margin)."""
    if not (0 <= quantile <= 100):
        raise ValueError(f'quantile must be a percentile in [0, 100], got {quantile!r}')
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f'margin must be a finite number >= 0, got {margin!r}')
    kind = 'temporal' if isinstance(rule, TemporalRule) else 'prompt'
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    o = _oriented(kind, s[np.isfinite(s)])
    if o.size == 0:
        raise ValueError(f'rule {rule.name}: no finite scores in the normal clip (a memory rule needs frames '
                         f'at least its lookback_s apart)')
    normal = float(np.percentile(o, quantile))
    lo, hi = _bounds(rule)
    enter, exit_, _ = _finish(normal + margin, normal, hysteresis, (-hi, -lo) if kind == 'temporal' else (lo, hi),
                              decimals, lo_open=kind == 'prompt')
    sugg = Suggestion(rule.name, kind, 'quantile', float(_oriented(kind, enter)), float(_oriented(kind, exit_)),
                      normal_level=float(_oriented(kind, normal)), quantile=quantile)
    fired = _fires(kind, s, sugg.enter)
    sugg.frames = {'normal_frames': int(s.size), 'would_fire': int(fired.sum())}
    return sugg


def _fires(kind: str, scores: np.ndarray, enter: float) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    with np.errstate(invalid='ignore'):
        return (s < enter) if kind == 'temporal' else (s >= enter)


def suggestion_yaml(suggestions: Sequence[Suggestion], header: str = '') -> str:
    """A snippet to merge into the policy file: only the fields the calibration sets, keyed by rule name."""
    lines = [f'# {line}' for line in header.splitlines()] if header else []
    for s in suggestions:
        lines.append(f'# {s.rule}: {_describe(s)}')
    prompt = [s for s in suggestions if s.kind == 'prompt']
    temporal = [s for s in suggestions if s.kind == 'temporal']
    if prompt:
        lines.append('actions:')
        for s in prompt:
            lines += [f'  - name: {s.rule}', f'    enter: {s.enter:.{DECIMALS}f}', f'    exit: {s.exit:.{DECIMALS}f}']
    if temporal:
        lines.append('temporal:')
        for s in temporal:
            lines += [f'  - name: {s.rule}', f'    below_similarity: {s.enter:.{DECIMALS}f}',
                      f'    exit_similarity: {s.exit:.{DECIMALS}f}']
    return '\n'.join(lines) + '\n'


def _fmt(x) -> str:
    return 'n/a' if x is None else f'{x:.3f}'


def _describe(s: Suggestion) -> str:
    if s.method == 'quantile':
        return (f'normal clip p{s.quantile:g} {_fmt(s.normal_level)}; would fire on '
                f'{s.frames.get("would_fire", 0)}/{s.frames.get("normal_frames", 0)} normal frames')
    f, c = s.frames, s.current
    j = None if c['tpr'] is None or c['fpr'] is None else c['tpr'] - c['fpr']
    text = (f'best {s.method} {_fmt(s.objective)} (frames tp {f["tp"]} fp {f["fp"]} fn {f["fn"]} tn {f["tn"]}, '
            f'{f["ignored"]} ambiguous ignored); current enter {c["enter"]:g}: youden {_fmt(j)}, '
            f'f1 {_fmt(c["f1"])}')
    return text + (f'; {s.note}' if s.note else '')


def choose_rules(spec: PolicySpec, labels: Labels | None, rules: Sequence[str] | None) -> list[str]:
    """Which rules to calibrate: those named; with labels, the labels' `action` or else the highest-priority
    rule (labelled spans are about one event); without labels, every rule (a normal clip is normal for all)."""
    names = [r.name for r in spec.rules]
    if rules:
        unknown = [r for r in rules if r not in names]
        if unknown:
            raise ValueError(f'no rule {", ".join(unknown)} in {spec.source}; it has {", ".join(names)}')
        return list(dict.fromkeys(rules))
    if labels is not None:
        if labels.action:
            if labels.action not in names:
                raise ValueError(f'{labels.source}: action {labels.action!r} is not a rule of {spec.source} '
                                 f'({", ".join(names)})')
            return [labels.action]
        return [max(spec.rules, key=lambda r: r.priority).name]   # max keeps file order on ties
    return names
