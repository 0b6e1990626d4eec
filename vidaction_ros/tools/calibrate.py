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
import csv
import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from .eval_metrics import IGNORED, POSITIVE, Labels, confusion, frame_labels, load_labels
from ..policy import Observation, PolicyEngine, PolicySpec, PromptRule, TemporalRule

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


# -- scoring frames exactly as the policy engine does ----------------------------------------------------------
def _cached(embed_texts: Callable) -> Callable:
    """embed_texts with a per-text cache: the per-prompt engines share one embedding of every text."""
    cache: dict[str, np.ndarray] = {}

    def embed(texts):
        missing = [t for t in texts if t not in cache]
        if missing:
            for text, row in zip(missing, np.asarray(embed_texts(missing))):
                cache[text] = row
        return np.stack([cache[t] for t in texts])
    return embed


def single_prompt_spec(spec: PolicySpec, rule: PromptRule, prompt: str) -> PolicySpec:
    """The policy with `rule` reduced to one positive prompt (other rules kept: a softmax rule without
    contrast competes with them). Memory rules are dropped: they do not change a prompt rule's score."""
    reduced = dataclasses.replace(rule, prompts=(prompt,))
    return dataclasses.replace(spec, actions=tuple(reduced if r is rule else r for r in spec.actions),
                               temporal=())


@dataclass
class FrameScores:
    stamp_s: float
    sequence: int
    action: str                                  # the decision of the policy as written
    rules: dict[str, float]                      # rule name -> score
    prompts: dict[str, dict[str, float]]         # prompt rule name -> prompt -> score


class ScoreTracer:
    """Feeds frame embeddings through a PolicyEngine (and one per prompt) and a TemporalMemory."""

    def __init__(self, spec: PolicySpec, embed_texts: Callable, logger=None, memory_capacity: int = 300,
                 memory_ttl_s: float = 30.0):
        embed = _cached(embed_texts)
        self.spec = spec
        self.engine = PolicyEngine(spec, embed, logger=logger)
        self.prompt_engines = {r.name: [(p, PolicyEngine(single_prompt_spec(spec, r, p), embed, logger=logger))
                                        for p in r.prompts] for r in spec.actions}
        lookbacks = self.engine.required_lookbacks
        if len(lookbacks) > 1:
            raise ValueError(f'memory rules with different lookback_s {lookbacks}: the memory node looks back '
                             f'one lookback_s, so only one of them can ever fire')
        self.lookback_s = lookbacks[0] if lookbacks else None
        self.memory_capacity, self.memory_ttl_s = memory_capacity, memory_ttl_s
        self.memory = None

    def observe(self, stamp_s: float, sequence: int, embedding) -> FrameScores:
        """embedding: a backends.FrameEmbedding (vector + regions)."""
        regions = {name: rv.vector for name, rv in embedding.regions.items()}
        similarity = None
        if self.lookback_s is not None:
            if self.memory is None:
                from ..memory import TemporalMemory
                self.memory = TemporalMemory(int(np.asarray(embedding.vector).size), capacity=self.memory_capacity,
                                             ttl_s=self.memory_ttl_s)
            # As the memory node: insert, then compare with the scene lookback_s before the newest frame.
            self.memory.insert(sequence, stamp_s, embedding.vector)
            past = self.memory.lookback(embedding.vector, self.lookback_s)
            similarity = float(past.similarity) if past is not None else None
        obs = Observation(stamp_s=stamp_s, sequence=sequence, vector=embedding.vector, regions=regions,
                          similarity_to_past=similarity, lookback_s=self.lookback_s)
        decision = self.engine.decide(obs)
        prompts = {name: {p: float(e.decide(obs).scores[name]) for p, e in engines}
                   for name, engines in self.prompt_engines.items()}
        return FrameScores(stamp_s, sequence, decision.action, {k: float(v) for k, v in decision.scores.items()},
                           prompts)


# -- frames ----------------------------------------------------------------------------------------------------
def iter_frames(source: str, step: int = 1, rate_hz: float | None = None, start_s: float | None = None,
                end_s: float | None = None, max_width: int = 640, max_height: int = 480,
                bag_topic: str | None = None) -> Iterator[tuple[int, float, np.ndarray]]:
    """(index, media time s, bgr8 frame at working resolution) of a video file or a rosbag2 bag.

    Kept: media time in [start_s, end_s), then every `step`-th frame, then at most `rate_hz` per second of
    media time (the camera's RateLimiter)."""
    from ..ingest.bags import BagFrameSource, is_bag_path
    from ..ingest.frame_source import OpenCvSource, downscale
    from ..ingest.rate import RateLimiter
    if step < 1:
        raise ValueError(f'step must be >= 1, got {step}')
    limiter = RateLimiter(rate_hz) if rate_hz else None
    src = BagFrameSource(source, bag_topic) if is_bag_path(source) else OpenCvSource(source)
    src.open()
    try:
        in_range = 0
        while True:
            image, index, media = src.read()
            if image is None:
                return
            if media is None:
                media = index / src.fps
            if start_s is not None and media < start_s - 1e-9:
                continue
            if end_s is not None and media >= end_s - 1e-9:
                return
            in_range += 1
            if (in_range - 1) % step:
                continue
            if limiter is not None and not limiter.ready(media):
                continue
            yield index, float(media), downscale(image, max_width, max_height)
    finally:
        src.close()


def frame_count(source: str, bag_topic: str | None = None) -> int | None:
    """Frames in the source (for the progress bar), or None when unknown."""
    from ..ingest.bags import IMAGE_TYPES, bag_info, is_bag_path
    try:
        if is_bag_path(source):
            topics = [t for t in bag_info(source).topics if t.msgtype in IMAGE_TYPES]
            return sum(t.count for t in topics if not bag_topic or t.name.lstrip('/') == bag_topic.lstrip('/'))
        import cv2
        cap = cv2.VideoCapture(source)
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        cap.release()
        return n or None
    except Exception:   # only for the progress bar: never fail a run over it
        return None


@dataclass
class Trace:
    source: str
    spec: PolicySpec
    model: str
    frames: list[FrameScores]

    @property
    def times(self) -> np.ndarray:
        return np.array([f.stamp_s for f in self.frames], dtype=np.float64)

    def rule_scores(self, name: str) -> np.ndarray:
        return np.array([f.rules[name] for f in self.frames], dtype=np.float64)

    def prompt_scores(self, rule: str, prompt: str) -> np.ndarray:
        return np.array([f.prompts[rule][prompt] for f in self.frames], dtype=np.float64)


def trace_source(source: str, spec: PolicySpec, backend, *, step: int = 1, rate_hz: float | None = None,
                 start_s: float | None = None, end_s: float | None = None, max_width: int = 640,
                 max_height: int = 480, bag_topic: str | None = None, progress=None) -> Trace:
    """Embed every kept frame with `backend` (activated) and score it with the policy's engines."""
    tracer = ScoreTracer(spec, backend.embed_texts)
    regions = list(spec.regions.values())
    frames = []
    for n, (index, media, image) in enumerate(iter_frames(source, step, rate_hz, start_s, end_s, max_width,
                                                          max_height, bag_topic)):
        embedding = backend.embed_images([image], regions)[0]
        frames.append(tracer.observe(media, index, embedding))
        if progress is not None:
            progress(n + 1, index)
    if not frames:
        raise ValueError(f'no frames selected from {source} (start {start_s}, end {end_s}, step {step})')
    return Trace(source, spec, getattr(backend, 'model_id', ''), frames)


# -- outputs ---------------------------------------------------------------------------------------------------
def write_csv(trace: Trace, path: Path) -> None:
    rules = [r.name for r in trace.spec.rules]
    prompt_cols = [(r, p) for r in rules for p in (trace.frames[0].prompts.get(r) or {})]
    with open(path, 'w', newline='', encoding='utf-8') as f:
        w = csv.writer(f)
        w.writerow(['time_s', 'sequence', 'action'] + [f'score:{r}' for r in rules]
                   + [f'prompt:{r}:{p}' for r, p in prompt_cols])
        for fr in trace.frames:
            w.writerow([f'{fr.stamp_s:.6f}', fr.sequence, fr.action] + [_num(fr.rules[r]) for r in rules]
                       + [_num(fr.prompts[r][p]) for r, p in prompt_cols])


def _num(x: float) -> str:
    return '' if x is None or not math.isfinite(x) else f'{x:.6f}'


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
    """Suggest thresholds from a trace and write scores.csv, scores.json, calibration.png, suggestion.yaml."""
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
    except Exception as err:   # a source that cannot be read, a label set with one class: say what, exit 1
        bar.close()
        from ..ingest.frame_source import SourceError
        if isinstance(err, (ValueError, SourceError, OSError)):
            sys.stderr.write(f'vidaction-calibrate: {err}\n')
            return 1
        raise
    finally:
        backend.deactivate()
    sys.stdout.write(result.yaml)
    sys.stderr.write('wrote ' + ', '.join(result.files.values()) + '\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
