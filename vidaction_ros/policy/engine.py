"""Action policy engine: a PolicySpec turned into one decision per frame (priority, hysteresis, hold, cooldown).

Pure core (numpy, stdlib): no ROS. The policy node adapts it (`nodes/policy_node.py`). The rules come from
`loader`, their scores from `scoring`.

Memory (temporal) rules compare the present with the scene ``lookback_s`` ago: the score is that cosine
similarity, and *lower is riskier* (the scene changed fast), so they fire when it drops below
``below_similarity``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping

import numpy as np

from ..perception.regions import FULL_FRAME
from .scoring import _competitors, score_margin, score_softmax
from .spec import (LOOKBACK_REL_TOL, PRIORITY_DEFAULT, TRIGGER_DEFAULT, TRIGGER_HOLD, TRIGGER_MEMORY, TRIGGER_PROMPT,
                   PolicySpec, PromptRule, TemporalRule)


# -- engine ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Observation:
    stamp_s: float                                     # message time of the frame (capture stamp)
    sequence: int
    vector: np.ndarray                                 # full-frame embedding
    regions: Mapping[str, np.ndarray] = field(default_factory=dict)   # region name -> embedding
    similarity_to_past: float | None = None            # from memory; None/NaN = unknown
    lookback_s: float | None = None                    # how far back that similarity looked (memory's setting)
    # Prompt-rule scores already computed with the embedding on its device (rule -> (score, best prompt)),
    # against this engine's prompt set (score_table.digest): used instead of scoring the vectors here.
    device_scores: Mapping[str, tuple[float, int]] | None = None


@dataclass(frozen=True)
class Decision:
    action: str
    action_code: int
    priority: int
    trigger: str                                       # 'default' | 'prompt' | 'memory' | 'hold'
    changed: bool
    score: float                                       # deciding rule's score this frame; NaN for default
    threshold: float                                   # its enter threshold (below_similarity for memory)
    matched_prompt: str
    region: str
    reason: str
    scores: Mapping[str, float]                        # every rule's score this frame
    active: tuple[str, ...] = ()                       # every active rule, winner first (pre-empted after)


class _RuleState:
    """Per-rule state machine: inactive -> active -> (released, cooling down) -> inactive."""
    __slots__ = ('active', 'fired_at', 'cooldown_until', 'below_since')

    def __init__(self):
        self.active = False
        self.fired_at = -math.inf
        self.cooldown_until = -math.inf
        self.below_since = math.inf      # while active: when the evidence last fell past exit (inf: it has not)

    def held_until(self, rule) -> float:
        """Message time until which an active rule is held with its evidence past exit: the later of its
        minimum hold (from firing) and its clear time (evidence past exit for min_clear_s)."""
        return max(self.fired_at + rule.min_hold_s, self.below_since + rule.min_clear_s)


class _Eval:
    """One rule's evaluation on one frame."""
    __slots__ = ('rule', 'score', 'best', 'trigger', 'active', 'blocked', 'text')

    def __init__(self, rule, score, best):
        self.rule, self.score, self.best = rule, score, best
        self.trigger = ''
        self.active = False
        self.blocked = False            # would fire but is cooling down
        self.text = ''


class PolicyEngine:
    """Decides one action per observation from a PolicySpec.

    All prompt texts (positive and contrast, deduplicated) are embedded once at construction with one call
    to `embed_texts` (list[str] -> (n, d) array); never per frame.
    """

    def __init__(self, spec: PolicySpec, embed_texts: Callable[[list[str]], np.ndarray],
                 logger=None):
        self.spec = spec
        self.logger = logger if logger is not None else logging.getLogger(__name__)
        self._competitors = {r.name: (r.contrast or _competitors(r, spec.actions)) for r in spec.actions}
        texts: list[str] = []
        for rule in spec.actions:
            for text in rule.prompts + self._competitors[rule.name]:
                if text not in texts:
                    texts.append(text)
        self.texts: tuple[str, ...] = tuple(texts)
        self.dim: int | None = None
        self._P: dict[str, np.ndarray] = {}
        self._C: dict[str, np.ndarray] = {}
        self.matrix: np.ndarray | None = None                       # (texts, dim) unit rows
        self.rows: dict[str, tuple[list[int], list[int]]] = {}      # rule -> (prompt rows, contrast rows)
        if texts:
            matrix = self.matrix = self._embed(embed_texts, texts)
            self.dim = matrix.shape[1]
            row = {t: i for i, t in enumerate(texts)}
            for rule in spec.actions:
                self.rows[rule.name] = ([row[t] for t in rule.prompts],
                                        [row[t] for t in self._competitors[rule.name]])
                self._P[rule.name] = matrix[self.rows[rule.name][0]]
                self._C[rule.name] = matrix[self.rows[rule.name][1]]
        self._required = list(dict.fromkeys(r.region for r in spec.actions if r.region != FULL_FRAME))
        self._lookback_warned: set = set()
        self.reset()

    @staticmethod
    def _embed(embed_texts, texts: list[str]) -> np.ndarray:
        out = embed_texts(list(texts))
        matrix = np.asarray(out, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[0] != len(texts) or matrix.shape[1] < 1:
            raise ValueError(f'embed_texts returned shape {np.shape(out)} for {len(texts)} texts; '
                             f'expected ({len(texts)}, dim)')
        bad = ~np.isfinite(matrix).all(axis=1)
        if bad.any():
            raise ValueError(f'embed_texts returned non-finite values for prompt {texts[int(np.argmax(bad))]!r}')
        norms = np.linalg.norm(matrix, axis=1)
        if (norms <= 1e-12).any():
            raise ValueError(f'embed_texts returned a zero vector for prompt {texts[int(np.argmin(norms))]!r}')
        # Normalise anyway: the scores are cosines only if both sides are unit vectors.
        return matrix / norms[:, None]

    # -- public API
    @property
    def required_regions(self) -> list[str]:
        """Region names that observations must carry an embedding for (those the rules look at)."""
        return list(self._required)

    @property
    def required_lookbacks(self) -> list[float]:
        """Distinct lookback_s of the memory rules (the memory's lookback must match them)."""
        return list(dict.fromkeys(r.lookback_s for r in self.spec.temporal))

    def reset(self) -> None:
        """Forget everything: rule states and the previous action (the next decision has changed=True)."""
        self._states = {r.name: _RuleState() for r in self.spec.rules}
        self._last_stamp: float | None = None
        self._last_action: str | None = None

    def decide(self, obs: Observation) -> Decision:
        stamp = self._check_stamp(obs.stamp_s)
        views = self._views(obs)
        similarity = self._similarity(obs)

        # Time is message time (capture stamps), so replaying a bag decides exactly as live. A stamp earlier
        # than the previous one means the source restarted (bag loop, replay from the start): holds and
        # cooldowns measured against the future would be meaningless, so start every rule from scratch.
        # The previous action is kept so `changed` still describes the published stream.
        if self._last_stamp is not None and stamp < self._last_stamp:
            self.logger.warning(f'policy: time went backwards ({self._last_stamp:.3f} s -> {stamp:.3f} s, '
                                f'frame {obs.sequence}): bag loop or replay restart; resetting rule states')
            self._states = {r.name: _RuleState() for r in self.spec.rules}
        self._last_stamp = stamp

        device = obs.device_scores or {}
        evals = [self._step_prompt(r, views, stamp, device.get(r.name)) for r in self.spec.actions]
        evals += [self._step_temporal(r, similarity, obs.lookback_s, stamp) for r in self.spec.temporal]

        # Highest priority wins; `sorted` is stable, so equal priorities keep file order (actions, then
        # temporal), which makes ties deterministic and visible in the file.
        active = sorted((e for e in evals if e.active), key=lambda e: -e.rule.priority)
        scores = MappingProxyType({e.rule.name: e.score for e in evals})
        if active:
            win = active[0]
            rule = win.rule
            reason = win.text
            if len(active) > 1:
                reason += '; pre-empts ' + ', '.join(f'{e.rule.name} ({e.rule.priority})' for e in active[1:])
            is_prompt = isinstance(rule, PromptRule)
            action, code, priority, trigger = rule.name, rule.code, rule.priority, win.trigger
            score = win.score
            threshold = rule.enter if is_prompt else rule.below_similarity
            matched = rule.prompts[win.best] if is_prompt and win.best >= 0 else ''
            region = rule.region if is_prompt else FULL_FRAME
        else:
            d = self.spec.default_action
            action, code, priority, trigger = d.name, d.code, PRIORITY_DEFAULT, TRIGGER_DEFAULT
            score = threshold = math.nan
            matched, region = '', FULL_FRAME
            reason = f'{d.name}: no rule active' + self._closest(evals)
        # `changed` marks transitions for controllers that act on edges; the first decision is a change
        # from "nothing published yet".
        changed = action != self._last_action
        self._last_action = action
        return Decision(action=action, action_code=code, priority=priority, trigger=trigger, changed=changed,
                        score=score, threshold=threshold, matched_prompt=matched, region=region, reason=reason,
                        scores=scores, active=tuple(e.rule.name for e in active))

    # -- input validation
    @staticmethod
    def _check_stamp(stamp) -> float:
        if isinstance(stamp, bool) or not isinstance(stamp, (int, float, np.integer, np.floating)) \
                or not math.isfinite(float(stamp)):
            raise ValueError(f'observation stamp_s must be a finite number of seconds, got {stamp!r}')
        return float(stamp)

    def _vector(self, v, what: str) -> np.ndarray:
        a = np.asarray(v, dtype=np.float64)
        if a.ndim != 1 or a.size == 0 or (self.dim is not None and a.shape[0] != self.dim):
            want = f'({self.dim},)' if self.dim is not None else '(dim,)'
            raise ValueError(f'{what}: expected a vector of shape {want} (the prompt embeddings\' dimension), '
                             f'got shape {np.shape(v)}')
        if not np.isfinite(a).all():
            raise ValueError(f'{what}: vector has non-finite values (NaN/inf)')
        norm = float(np.linalg.norm(a))
        if norm <= 1e-12:
            raise ValueError(f'{what}: vector is all zeros')
        # Embeddings arrive unit-length; re-dividing those would only add rounding, so normalise only a
        # vector that is visibly not unit-length (scores must be cosines to mean anything).
        return a if abs(norm - 1.0) <= 1e-6 else a / norm

    def _views(self, obs: Observation) -> dict[str, np.ndarray]:
        views = {FULL_FRAME: self._vector(obs.vector, f'frame {obs.sequence} embedding')}
        regions = obs.regions or {}
        for name in self._required:
            if name not in regions:
                have = ', '.join(repr(k) for k in regions) or 'none'
                raise ValueError(f'frame {obs.sequence}: the policy needs an embedding of region {name!r} '
                                 f'but the observation has {have}; is the embedder using the same policy file?')
            views[name] = self._vector(regions[name], f'frame {obs.sequence} region {name!r} embedding')
        return views

    @staticmethod
    def _similarity(obs: Observation) -> float:
        s = obs.similarity_to_past
        if s is None:
            return math.nan
        if isinstance(s, bool) or not isinstance(s, (int, float, np.integer, np.floating)):
            raise ValueError(f'frame {obs.sequence}: similarity_to_past must be a number or None, got {s!r}')
        s = float(s)
        if math.isnan(s):
            return s
        if not -1.0 - 1e-6 <= s <= 1.0 + 1e-6:
            raise ValueError(f'frame {obs.sequence}: similarity_to_past {s!r} is not a cosine in [-1, 1]')
        return s

    # -- per-rule state machines
    def _transition(self, e: _Eval, state: _RuleState, now: float, fires: bool, stays: bool,
                    trigger: str) -> None:
        rule = e.rule
        if state.active:
            if stays:
                # Hysteresis: once active, a rule stays while its score is past the (laxer) exit threshold, so
                # a score flickering around `enter` does not toggle the robot between actions every frame.
                state.below_since = math.inf
                e.active, e.trigger = True, trigger
                return
            state.below_since = min(state.below_since, now)
            if now < state.held_until(rule):
                # Minimum hold: a protective action lasts at least min_hold_s of message time after it fired;
                # minimum clear: and until its evidence has stayed past exit for min_clear_s. Both bridge
                # detector misses (a person occluded for a few frames) without the robot driving off between.
                e.active, e.trigger = True, TRIGGER_HOLD
            else:
                # Release; cooldown stops a rule that just ended from re-firing at once (chatter).
                state.active = False
                state.below_since = math.inf
                state.cooldown_until = now + rule.cooldown_s
                self.logger.debug(f'policy: {rule.name} released at {now:.3f} s')
        elif fires:
            if now < state.cooldown_until:
                e.blocked = True
            else:
                state.active, state.fired_at, state.below_since = True, now, math.inf
                e.active, e.trigger = True, trigger
                self.logger.debug(f'policy: {rule.name} fired at {now:.3f} s (score {e.score:.3f})')

    def _step_prompt(self, rule: PromptRule, views, now: float, device_score=None) -> _Eval:
        v = views[rule.region]
        if device_score is not None and math.isfinite(device_score[0]) and 0 <= device_score[1] < len(rule.prompts):
            score, best = float(device_score[0]), int(device_score[1])
        elif rule.score == 'margin':
            score, best = score_margin(v, self._P[rule.name], self._C[rule.name])
        else:
            score, best = score_softmax(v, self._P[rule.name], self._C[rule.name], rule.temperature)
        e = _Eval(rule, score, best)
        state = self._states[rule.name]
        was_active = state.active
        self._transition(e, state, now, fires=score >= rule.enter, stays=score >= rule.exit,
                         trigger=TRIGGER_PROMPT)
        where = rule.region if rule.region else 'full frame'
        what = f'{where} {_short(rule.prompts[best])!r} {rule.score} {score:.3f}'
        if e.trigger == TRIGGER_HOLD:
            e.text = f'{rule.name}: {_held_by(rule, state)} ({what} < exit {rule.exit:.3f})'
        elif e.active and was_active and score < rule.enter:
            e.text = f'{rule.name}: {what} >= exit {rule.exit:.3f} (hysteresis, active since {state.fired_at:.3f} s)'
        elif e.active:
            e.text = f'{rule.name}: {what} >= {rule.enter:.3f}'
        elif e.blocked:
            e.text = (f'{rule.name}: {what} >= {rule.enter:.3f} but cooling down until '
                      f'{state.cooldown_until:.3f} s')
        else:
            e.text = f'{rule.name} {rule.score} {score:.3f} < {rule.enter:.3f}'
        return e

    def _step_temporal(self, rule: TemporalRule, similarity: float, obs_lookback, now: float) -> _Eval:
        s = similarity
        if not math.isnan(s) and obs_lookback is not None and not self._lookback_matches(rule, obs_lookback):
            s = math.nan
        e = _Eval(rule, s, -1)
        state = self._states[rule.name]
        was_active = state.active
        known = not math.isnan(s)
        # Lower similarity is riskier. Unknown similarity (no past yet, or a mismatched lookback) can neither
        # fire nor keep the rule active on its own; only min_hold / min_clear can carry an active rule through it.
        self._transition(e, state, now, fires=known and s < rule.below_similarity,
                         stays=known and s < rule.exit_similarity, trigger=TRIGGER_MEMORY)
        sim = f'similarity to the scene {rule.lookback_s:g} s ago ' + (f'{s:.3f}' if known else 'unknown')
        if e.trigger == TRIGGER_HOLD:
            e.text = f'{rule.name}: {_held_by(rule, state)} ({sim})'
        elif e.active and was_active and s >= rule.below_similarity:
            e.text = (f'{rule.name}: {sim} < exit {rule.exit_similarity:.3f} '
                      f'(hysteresis, active since {state.fired_at:.3f} s)')
        elif e.active:
            e.text = f'{rule.name}: {sim} < {rule.below_similarity:.3f}'
        elif e.blocked:
            e.text = (f'{rule.name}: {sim} < {rule.below_similarity:.3f} but cooling down until '
                      f'{state.cooldown_until:.3f} s')
        else:
            e.text = f'{rule.name} {sim}' + (f' >= {rule.below_similarity:.3f}' if known else '')
        return e

    def _lookback_matches(self, rule: TemporalRule, obs_lookback) -> bool:
        try:
            lb = float(obs_lookback)
        except (TypeError, ValueError):
            return False
        if not math.isfinite(lb) or lb <= 0:
            return True   # the memory did not say how far back it looked; trust it
        if abs(lb - rule.lookback_s) <= LOOKBACK_REL_TOL * rule.lookback_s:
            return True
        key = (rule.name, lb)
        if key not in self._lookback_warned:
            self._lookback_warned.add(key)
            self.logger.warning(f'policy: rule {rule.name} compares with the scene {rule.lookback_s:g} s ago, but '
                                f'the memory looked back {lb:g} s; the rule cannot fire until the memory\'s '
                                f'lookback_s matches')
        return False

    @staticmethod
    def _closest(evals) -> str:
        """For the default decision: the rule nearest to firing (or cooling down), for calibration."""
        blocked = [e for e in evals if e.blocked]
        if blocked:
            return '; ' + '; '.join(e.text for e in blocked)
        best, gap = None, math.inf
        for e in evals:
            if math.isnan(e.score):
                continue
            if isinstance(e.rule, PromptRule):
                g = e.rule.enter - e.score
            else:
                g = e.score - e.rule.below_similarity
            if g < gap:
                best, gap = e, g
        return f'; closest: {best.text}' if best is not None else ''


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[:n - 3] + '...'


def _held_by(rule, state: _RuleState) -> str:
    """Why an active rule is still held, for Action.reason."""
    hold_end = state.fired_at + rule.min_hold_s
    clear_end = state.below_since + rule.min_clear_s
    if clear_end > hold_end:
        return (f'held until {clear_end:.3f} s by min_clear {rule.min_clear_s:g} s '
                f'(past exit since {state.below_since:.3f} s)')
    return f'held until {hold_end:.3f} s by min_hold {rule.min_hold_s:g} s'
