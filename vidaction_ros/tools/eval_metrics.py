"""Replay evaluation metrics: labelled spans versus the actions a pipeline fired. Pure (numpy, yaml): no ROS.

Used by `vidaction-eval` (evaluate.py) and `vidaction-calibrate` (calibrate.py); unit-tested directly.

Labels file (test/data/vtest_near_zone_labels.yaml is one)::

    spans:                      # media-time seconds [start, end]: the event is happening
      - {start: 50.4, end: 73.3, note: "..."}
    ambiguous:                  # optional: genuinely hard to tell; neither counted nor penalised
      - {start: 50.2, end: 50.6}
    action: STOP                # optional: the action these spans are about (else the caller chooses)

Any other keys (video, fps, method, ...) are documentation and ignored.

Event-level matching rules (``event_metrics``). Times are message times (header stamps) of decided frames;
"active" means the action was the published decision for that frame.

* An *episode* is a maximal run of consecutive decided frames on which the action is active; its *onset*
  (the moment it fired) is the stamp of the run's first frame.
* The detection window of a span ``[start, end]`` is ``[start - before_s, end]`` (end capped at
  ``start + max_delay_s`` when ``max_delay_s`` is given). The span is *detected* when the action is active
  on at least one frame inside its detection window. ``first_fire_s`` is the earliest such frame.
* Lead time = ``start - first_fire_s``: positive when the action fired before the labelled start (early,
  at most ``before_s``), negative when it fired after (the detection delay).
* A span is *evaluated* only when some decided frame lies in its detection window (a recording that ends
  before a span begins cannot miss it). ``truncated`` marks spans whose detection window opened before the
  recording did: their lead time is a bound, not a measurement.
* The allowed window of a span is ``[start - before_s, end + after_s]`` (``after_s`` covers a minimum hold
  after the event ends); ambiguous spans have allowed windows too. An onset inside no allowed window is a
  *false alarm*. An onset inside an allowed window is *explained*; explained onsets beyond the first in one
  allowed window (overlapping windows merged) are counted as ``refires`` (chatter), never as false alarms.
  A late firing (after ``max_delay_s``) makes its span a miss, not a false alarm.
* Steadiness, per detected span: ``toggles`` = onsets after the first firing up to the span's end (each one
  is the robot released and stopped again while the event was still going on); ``frame_recall_after_first``
  = fraction of decided frames in ``[first_fire_s, end]`` on which the action is active; ``release_s`` = the
  stamp of the first inactive frame after the last active frame at or before the end (None when the
  recording ends with the action still active), and ``release_delay_s = release_s - end`` (negative: released
  before the event ended).
* tp = detected spans, fn = evaluated spans not detected, fp = false alarms.
  precision = tp / (tp + fp) (None when there is neither), recall = tp / evaluated spans (None without
  any), f1 from both (None when either is None).

Frame-level counts (``frame_metrics``): a frame is positive when its stamp lies in a span (closed interval),
ignored when it lies in an ambiguous span, negative otherwise.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np

LATENCY_FIELDS = ('capture_to_embed_ms', 'embed_ms', 'embed_to_decide_ms', 'capture_to_decide_ms')
PERCENTILES = (50.0, 90.0, 99.0)


class LabelsError(ValueError):
    """A labels file is invalid: the message names the file and the field."""


# -- labels --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Span:
    start: float
    end: float
    note: str = ''

    def contains(self, t: float) -> bool:
        return self.start <= t <= self.end


@dataclass(frozen=True)
class Labels:
    spans: tuple[Span, ...]
    ambiguous: tuple[Span, ...] = ()
    action: str | None = None
    source: str = '<labels>'


def _span(raw, source: str, path: str) -> Span:
    if not isinstance(raw, dict):
        raise LabelsError(f'{source}: {path}: expected a mapping {{start: s, end: s}}, got {raw!r}')
    values = []
    for key in ('start', 'end'):
        v = raw.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise LabelsError(f'{source}: {path}.{key}: expected a finite number of seconds, got {v!r}')
        values.append(float(v))
    if values[1] < values[0]:
        raise LabelsError(f'{source}: {path}.end: expected end >= start ({values[0]:g}), got {values[1]:g}')
    note = raw.get('note', '')
    return Span(values[0], values[1], note if isinstance(note, str) else str(note))


def parse_labels(data, source: str = '<labels>') -> Labels:
    if not isinstance(data, dict):
        raise LabelsError(f'{source}: (top level): expected a mapping with a `spans` list, got {data!r}')
    if 'spans' not in data:
        raise LabelsError(f'{source}: spans: expected a list of {{start, end}} spans, got nothing (field missing)')
    out = {}
    for key in ('spans', 'ambiguous'):
        raw = data.get(key) or []
        if not isinstance(raw, list):
            raise LabelsError(f'{source}: {key}: expected a list of {{start, end}} spans, got {raw!r}')
        out[key] = tuple(sorted((_span(s, source, f'{key}[{i}]') for i, s in enumerate(raw)),
                                key=lambda s: (s.start, s.end)))
    action = data.get('action')
    if action is not None and (not isinstance(action, str) or not action.strip()):
        raise LabelsError(f'{source}: action: expected an action name, got {action!r}')
    return Labels(out['spans'], out['ambiguous'], action, source)


def load_labels(path: str | os.PathLike) -> Labels:
    """Read a labels YAML file (safe loading). LabelsError names the file and the field."""
    import yaml
    source = os.path.abspath(os.fspath(path))   # reports name the file wherever they are read from
    try:
        with open(source, encoding='utf-8') as f:
            data = yaml.safe_load(f)
    except OSError as err:
        raise LabelsError(f'{source}: cannot read labels file: {err}') from None
    except yaml.YAMLError as err:
        raise LabelsError(f'{source}: not valid YAML: {err}') from None
    return parse_labels(data, source)


# -- episodes -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Episode:
    onset: float        # stamp of the first active frame
    offset: float       # stamp of the last active frame
    frames: int


def _times(times: Sequence[float]) -> np.ndarray:
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    if t.size and not np.isfinite(t).all():
        raise ValueError('frame times must be finite')
    if t.size > 1 and not (np.diff(t) > 0).all():
        raise ValueError('frame times must be strictly increasing (one decision per frame, in order)')
    return t


def episodes(times: Sequence[float], active: Sequence[bool]) -> list[Episode]:
    """Maximal runs of consecutive active frames."""
    t = _times(times)
    a = np.asarray(active, dtype=bool).reshape(-1)
    if a.size != t.size:
        raise ValueError(f'{t.size} frame times but {a.size} active flags')
    out, start = [], None
    for i, on in enumerate(a):
        if on and start is None:
            start = i
        if start is not None and (not on or i == a.size - 1):
            last = i if on else i - 1
            out.append(Episode(float(t[start]), float(t[last]), last - start + 1))
            start = None
    return out


# -- event metrics --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tolerances:
    before_s: float = 1.0              # firing this early before a labelled start still counts
    after_s: float = 2.0               # still active this long after a span ends is not a false alarm
    max_delay_s: float | None = None   # a firing later than start + this counts as a miss

    def __post_init__(self):
        for name in ('before_s', 'after_s'):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f'{name} must be a finite number >= 0, got {v!r}')
        if self.max_delay_s is not None and not (math.isfinite(self.max_delay_s) and self.max_delay_s >= 0):
            raise ValueError(f'max_delay_s must be None or a finite number >= 0, got {self.max_delay_s!r}')


@dataclass
class SpanResult:
    start: float
    end: float
    evaluated: bool              # some decided frame lies in the detection window
    detected: bool
    first_fire_s: float | None
    lead_s: float | None         # start - first_fire_s (positive = early)
    truncated: bool              # the recording began after the detection window opened
    note: str = ''
    toggles: int = 0             # onsets after the first firing, up to the span's end
    frame_recall_after_first: float | None = None
    release_s: float | None = None
    release_delay_s: float | None = None   # release_s - end (negative = released before the event ended)


@dataclass
class EventMetrics:
    action: str
    spans: list[SpanResult]
    tp: int
    fn: int
    fp: int
    false_alarms: list[float]    # onset times of false alarms
    onsets: list[float]
    refires: int
    precision: float | None
    recall: float | None
    f1: float | None
    lead_time_s: dict = field(default_factory=dict)   # mean/median/min/max over detected spans
    toggles: int = 0                                  # sum of the spans' toggles
    release_delay_s: dict = field(default_factory=dict)   # mean/min/max over spans with a release
    tolerances: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _ratio(num: int, den: int) -> float | None:
    return num / den if den > 0 else None


def event_metrics(times: Sequence[float], active: Sequence[bool], spans: Iterable[Span],
                  ambiguous: Iterable[Span] = (), tol: Tolerances = Tolerances(),
                  action: str = '') -> EventMetrics:
    """Event-level precision, recall, lead time and false alarms (rules in the module docstring)."""
    t = _times(times)
    a = np.asarray(active, dtype=bool).reshape(-1)
    eps = episodes(t, a)
    onsets = [e.onset for e in eps]
    spans = sorted(spans, key=lambda s: (s.start, s.end))
    ambiguous = list(ambiguous)
    results = []
    for s in spans:
        lo = s.start - tol.before_s
        hi = s.end if tol.max_delay_s is None else min(s.end, s.start + tol.max_delay_s)
        inside = (t >= lo) & (t <= hi)
        evaluated = bool(inside.any())
        fired = inside & a
        first = float(t[fired][0]) if fired.any() else None
        result = SpanResult(
            start=s.start, end=s.end, evaluated=evaluated, detected=first is not None, first_fire_s=first,
            lead_s=None if first is None else s.start - first,
            truncated=bool(evaluated and t[0] > lo), note=s.note)
        if first is not None:
            _steadiness(result, t, a, onsets, s.end)
        results.append(result)
    windows = _merge([(s.start - tol.before_s, s.end + tol.after_s) for s in list(spans) + ambiguous])
    false_alarms, per_window = [], [0] * len(windows)
    for onset in onsets:
        hit = next((i for i, (lo, hi) in enumerate(windows) if lo <= onset <= hi), None)
        if hit is None:
            false_alarms.append(onset)
        else:
            per_window[hit] += 1
    tp = sum(r.detected for r in results)
    evaluated = sum(r.evaluated for r in results)
    fp = len(false_alarms)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, evaluated)
    f1 = None
    if precision is not None and recall is not None:
        f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    leads = [r.lead_s for r in results if r.lead_s is not None]
    lead_stats = {}
    if leads:
        lead_stats = {'mean': float(np.mean(leads)), 'median': float(np.median(leads)),
                      'min': float(np.min(leads)), 'max': float(np.max(leads)), 'n': len(leads)}
    delays = [r.release_delay_s for r in results if r.release_delay_s is not None]
    release_stats = {}
    if delays:
        release_stats = {'mean': float(np.mean(delays)), 'min': float(np.min(delays)),
                         'max': float(np.max(delays)), 'n': len(delays)}
    return EventMetrics(action=action, spans=results, tp=tp, fn=evaluated - tp, fp=fp, false_alarms=false_alarms,
                        onsets=onsets, refires=sum(max(0, n - 1) for n in per_window), precision=precision,
                        recall=recall, f1=f1, lead_time_s=lead_stats, tolerances=asdict(tol),
                        toggles=sum(r.toggles for r in results), release_delay_s=release_stats)


def _steadiness(result: SpanResult, t: np.ndarray, a: np.ndarray, onsets: list[float], end: float) -> None:
    """Toggles, frame recall after the first firing and the release of a detected span (module docstring)."""
    first = result.first_fire_s
    result.toggles = sum(1 for o in onsets if first < o <= end)
    after = (t >= first) & (t <= end)
    result.frame_recall_after_first = float(a[after].mean()) if after.any() else None
    last_active = np.flatnonzero(a & (t <= end))
    if not last_active.size:
        return
    i = int(last_active[-1])
    while i + 1 < t.size and a[i + 1]:
        i += 1
    if i + 1 < t.size:
        result.release_s = float(t[i + 1])
        result.release_delay_s = result.release_s - end


def _merge(windows: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Overlapping allowed windows (a span and the ambiguous edges around it) merged into one."""
    out: list[tuple[float, float]] = []
    for lo, hi in sorted(windows):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


# -- frame-level labels and counts ----------------------------------------------------------------------------
POSITIVE, NEGATIVE, IGNORED = 1, 0, -1


def frame_labels(times: Sequence[float], spans: Iterable[Span], ambiguous: Iterable[Span] = ()) -> np.ndarray:
    """Per frame: POSITIVE inside a span, IGNORED inside an ambiguous span (which wins), else NEGATIVE."""
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    out = np.full(t.size, NEGATIVE, dtype=np.int8)
    for s in spans:
        out[(t >= s.start) & (t <= s.end)] = POSITIVE
    for s in ambiguous:
        out[(t >= s.start) & (t <= s.end)] = IGNORED
    return out


def confusion(predicted: Sequence[bool], labels: Sequence[int]) -> dict:
    """Frame counts tp/fp/fn/tn (ignored frames left out) with precision, recall, f1, tpr, fpr."""
    p = np.asarray(predicted, dtype=bool).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if p.size != y.size:
        raise ValueError(f'{p.size} predictions but {y.size} labels')
    keep = y != IGNORED
    p, y = p[keep], y[keep] == POSITIVE
    tp, fp = int((p & y).sum()), int((p & ~y).sum())
    fn, tn = int((~p & y).sum()), int((~p & ~y).sum())
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return {'tp': tp, 'fp': fp, 'fn': fn, 'tn': tn, 'ignored': int((~keep).sum()), 'precision': precision,
            'recall': recall, 'f1': f1, 'tpr': recall, 'fpr': _ratio(fp, fp + tn)}


def frame_metrics(times: Sequence[float], active: Sequence[bool], spans: Iterable[Span],
                  ambiguous: Iterable[Span] = ()) -> dict:
    return confusion(active, frame_labels(times, spans, ambiguous))


# -- latency --------------------------------------------------------------------------------------------------
def percentiles(values: Iterable[float], qs: Sequence[float] = PERCENTILES) -> dict:
    """n, mean, max and the given percentiles of the finite values (NaN = not measured, left out)."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    out: dict = {'n': int(v.size)}
    if v.size == 0:
        out.update({f'p{q:g}': None for q in qs})
        out.update(mean=None, max=None)
        return out
    out.update({f'p{q:g}': float(np.percentile(v, q)) for q in qs})
    out.update(mean=float(v.mean()), max=float(v.max()))
    return out


def latency_table(rows: Iterable[dict], fields: Sequence[str] = LATENCY_FIELDS) -> dict:
    """Per-stage latency percentiles from per-Action rows {field: ms}."""
    rows = list(rows)
    return {f: percentiles(r.get(f) for r in rows) for f in fields}
