"""Action policy: a YAML file of prompt rules and memory rules, turned into one decision per frame.

Pure core (numpy, yaml, stdlib): no ROS. The policy node adapts it (`nodes/policy_node.py`).

Scores are calibrated, never bare cosines. Image-text cosines of joint-embedding models sit near 0.1-0.4
for matching *and* non-matching text, so "cosine >= 0.85" never fires and "cosine >= 0.25" fires on
anything. A rule therefore scores a frame *relative to contrast prompts* that describe the safe scene:

* ``margin``: cosine to the best positive prompt minus cosine to the best contrast prompt, in [-2, 2].
  Positive means the frame looks more like the risk than like the safe scene.
* ``softmax``: the probability mass of the positive prompts in a softmax over
  [positive prompts + contrast prompts] of cosine / temperature, in [0, 1] (CLIP zero-shot style).
  Without contrast prompts in the rule, the prompts of every *other* rule in the policy compete instead
  (zero-shot classification over the policy's vocabulary); a softmax over a rule's own prompts alone would
  always sum to 1 and say nothing.

Memory (temporal) rules compare the present with the scene ``lookback_s`` ago: the score is that cosine
similarity, and *lower is riskier* (the scene changed fast), so they fire when it drops below
``below_similarity``.

File format (``load_policy``; every key is validated, unknown keys are errors)::

    version: 1
    default_action: {name: CONTINUE, code: CONTINUE}
    regions:
      near_zone: {polygon: [[0.0, 0.47], [1.0, 0.90], [1.0, 1.0], [0.0, 1.0]]}
    actions:
      - {name: STOP, code: STOP, priority: 200, region: near_zone, prompts: [...], contrast: [...],
         score: margin, enter: 0.10, exit: 0.06, min_hold_s: 1.0, cooldown_s: 0.0}
    temporal:
      - {name: HOVER, code: HOVER, priority: 150, lookback_s: 2.0, below_similarity: 0.80,
         exit_similarity: 0.85, min_hold_s: 1.0, cooldown_s: 0.0}
"""
from __future__ import annotations

import difflib
import logging
import math
import os
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

import numpy as np
import yaml

from ..perception.regions import FULL_FRAME, Region

# Action.msg ACTION_* constants: stable integers for C++ controllers.
ACTION_CODES: Mapping[str, int] = MappingProxyType({
    'CONTINUE': 0, 'SLOW_DOWN': 1, 'HOVER': 2, 'STOP': 3, 'EMERGENCY_BRAKE': 4, 'FAILSAFE': 5, 'CUSTOM': 255,
})
# Action.msg PRIORITY_* constants; a rule's priority may be one of these names or any integer 1..255.
PRIORITY_DEFAULT = 0
PRIORITY_NAMES: Mapping[str, int] = MappingProxyType({'LOW': 50, 'MEDIUM': 100, 'HIGH': 200, 'CRITICAL': 255})
# Action.msg TRIGGER_* constants used by the policy (TRIGGER_WATCHDOG belongs to the node's staleness check).
TRIGGER_DEFAULT = 'default'
TRIGGER_PROMPT = 'prompt'
TRIGGER_MEMORY = 'memory'
TRIGGER_HOLD = 'hold'

SCORE_KINDS = ('margin', 'softmax')
POLICY_VERSION = 1
# A memory rule trusts Observation.similarity_to_past only when Observation.lookback_s (the memory's
# lookback) is within this relative tolerance of the rule's lookback_s: a similarity to the scene 10 s ago
# says nothing about a 2 s rule. The memory itself matches the past frame within +-lookback/2.
LOOKBACK_REL_TOL = 0.25


# -- errors ------------------------------------------------------------------------------------------------
class PolicyError(ValueError):
    """A policy file is invalid. The message names the file (or "<dict>"), the field path (e.g.
    ``actions[1].enter``) and what was expected versus what was found."""

    def __init__(self, source: str, path: str, expected: str, got: str):
        self.source, self.path, self.expected, self.got = source, path, expected, got
        super().__init__(f'{source}: {path}: expected {expected}, got {got}')


_MISSING = object()


def _describe(value: Any) -> str:
    if value is _MISSING:
        return 'nothing (field missing)'
    if value is None:
        return 'null'
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + '...'
    return f'{text} ({type(value).__name__})'


# -- spec --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DefaultAction:
    name: str
    code: int


@dataclass(frozen=True)
class PromptRule:
    """A rule that scores the frame (or one region) against free-text prompts."""
    name: str
    code: int
    priority: int
    prompts: tuple[str, ...]
    contrast: tuple[str, ...] = ()
    region: str = FULL_FRAME
    score: str = 'margin'
    temperature: float | None = None
    enter: float = 0.0
    exit: float = 0.0
    min_hold_s: float = 0.0
    cooldown_s: float = 0.0
    index: int = 0                     # position in `actions` (file order breaks priority ties)

    @property
    def path(self) -> str:
        return f'actions[{self.index}]'


@dataclass(frozen=True)
class TemporalRule:
    """A rule that fires when the scene differs from the scene `lookback_s` ago (similarity drops)."""
    name: str
    code: int
    priority: int
    lookback_s: float
    below_similarity: float
    exit_similarity: float
    min_hold_s: float = 0.0
    cooldown_s: float = 0.0
    index: int = 0                     # position in `temporal`

    @property
    def path(self) -> str:
        return f'temporal[{self.index}]'


@dataclass(frozen=True)
class PolicySpec:
    version: int
    default_action: DefaultAction
    regions: Mapping[str, Region]
    actions: tuple[PromptRule, ...]
    temporal: tuple[TemporalRule, ...]
    source: str = '<dict>'

    @property
    def rules(self) -> tuple:
        """All rules in tie-break order: `actions` in file order, then `temporal` in file order."""
        return self.actions + self.temporal


# -- parsing -----------------------------------------------------------------------------------------------
def load_policy(path: str | os.PathLike) -> PolicySpec:
    """Read and validate a policy YAML file (safe loading: no arbitrary objects; repeated keys are errors)."""
    source = os.fspath(path)
    try:
        with open(source, encoding='utf-8') as f:
            text = f.read()
    except FileNotFoundError:
        raise PolicyError(source, '(file)', 'an existing policy file', 'no such file') from None
    except OSError as err:
        raise PolicyError(source, '(file)', 'a readable policy file', f'{type(err).__name__}: {err}') from None
    except UnicodeDecodeError as err:
        raise PolicyError(source, '(file)', 'UTF-8 text', f'undecodable bytes ({err.reason})') from None
    try:
        data = yaml.load(text, Loader=_UniqueKeySafeLoader)
    except yaml.YAMLError as err:
        where = ''
        mark = getattr(err, 'problem_mark', None)
        if mark is not None:
            where = f' at line {mark.line + 1}, column {mark.column + 1}'
        problem = getattr(err, 'problem', None) or str(err).splitlines()[0]
        raise PolicyError(source, '(yaml)', 'valid YAML', f'a syntax error{where}: {problem}') from None
    return parse_policy(data, source=source)


class _UniqueKeySafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader (no arbitrary Python objects), except that a key repeated in one mapping is an error.
    Plain PyYAML keeps the last of two `enter:` lines silently, which is exactly the kind of typo a policy
    file must not hide. Keys brought in by a merge (`<<: *base`) may still be overridden explicitly."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == 'tag:yaml.org,2002:merge':
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.get(key)
        except TypeError:
            continue   # unhashable key: SafeConstructor reports it below
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f'duplicate key {key!r} (first at line {first})', key_node.start_mark)
        seen[key] = key_node.start_mark.line + 1
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeySafeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def parse_policy(data: Any, source: str = '<dict>') -> PolicySpec:
    """Validate an already-loaded policy mapping. Raises PolicyError naming `source` and the field."""
    return _Parser(source).policy(data)


class _Parser:
    def __init__(self, source: str):
        self.source = source

    def fail(self, path: str, expected: str, got: Any) -> PolicyError:
        return PolicyError(self.source, path, expected, _describe(got))

    # ---- generic field readers
    def mapping(self, value, path: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
        if value is _MISSING or not isinstance(value, dict):
            what = 'nothing (empty document)' if value is None and path == '(top level)' else _describe(value)
            raise PolicyError(self.source, path, 'a mapping', what)
        for key in value:
            # Unknown keys are errors: a typo such as `entr:` must not silently fall back to a default.
            if key not in allowed:
                hint = ''
                if isinstance(key, str):
                    close = difflib.get_close_matches(key, allowed, n=1)
                    if close:
                        hint = f'; did you mean {close[0]!r}?'
                raise PolicyError(self.source, _join(path, key),
                                  f'one of the keys {", ".join(allowed)}{hint}', f'unknown key {key!r}')
        for key in required:
            if key not in value:
                raise PolicyError(self.source, _join(path, key), f'the required field {key!r}',
                                  'nothing (field missing)')
        return value

    def number(self, value, path: str, lo: float | None = None, hi: float | None = None,
               lo_open: bool = False, what: str = 'a number') -> float:
        # bool is an int subclass in Python; `enter: yes` is a typo, never 1.0.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(path, f'{what}{_range_text(lo, hi, lo_open)}', value)
        v = float(value)
        if not math.isfinite(v):
            raise self.fail(path, f'a finite number{_range_text(lo, hi, lo_open)}', value)
        if (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and v > hi):
            raise self.fail(path, f'{what}{_range_text(lo, hi, lo_open)}', value)
        return v

    def name(self, value, path: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(path, 'a non-empty string', value)
        if value != value.strip():
            raise self.fail(path, 'a name without leading/trailing spaces', value)
        return value

    def code(self, value, path: str) -> int:
        if not isinstance(value, str) or value not in ACTION_CODES:
            raise self.fail(path, f'one of {", ".join(ACTION_CODES)}', value)
        return ACTION_CODES[value]

    def priority(self, value, path: str) -> int:
        if isinstance(value, str) and value in PRIORITY_NAMES:
            return PRIORITY_NAMES[value]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 255:
            raise self.fail(path, f'an integer 1..255 (higher wins) or one of {", ".join(PRIORITY_NAMES)}',
                            value)
        return value

    def texts(self, value, path: str, min_items: int, what: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail(path, f'a list of {what} (at least {min_items})', value)
        if len(value) < min_items:
            raise self.fail(path, f'a list of {what} with at least {min_items} item(s)', value)
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise self.fail(f'{path}[{i}]', 'a non-empty free-text string', item)
            item = item.strip()
            if item in out:
                raise self.fail(f'{path}[{i}]', 'no duplicate prompts in one list', item)
            out.append(item)
        return tuple(out)

    # ---- sections
    def policy(self, data) -> PolicySpec:
        top = '(top level)'
        data = self.mapping(data, top, ('version', 'default_action', 'regions', 'actions', 'temporal'),
                            required=('version',))
        version = data['version']
        if isinstance(version, bool) or version != POLICY_VERSION or not isinstance(version, int):
            raise self.fail('version', f'{POLICY_VERSION} (the only policy format version)', version)
        default = self.default_action(data.get('default_action', {'name': 'CONTINUE', 'code': 'CONTINUE'}))
        regions = self.regions(data.get('regions', {}))
        # An empty section (`temporal:` with every entry commented out) loads as null: treat it as empty.
        actions_raw = data.get('actions') or []
        temporal_raw = data.get('temporal') or []
        for key, raw in (('actions', actions_raw), ('temporal', temporal_raw)):
            if not isinstance(raw, list):
                raise self.fail(key, 'a list of rules', raw)
        if not actions_raw and not temporal_raw:
            raise self.fail('actions', 'at least one rule in actions or temporal (a policy with no rules '
                            'would always answer the default action)', actions_raw)
        actions = tuple(self.prompt_rule(raw, i, regions) for i, raw in enumerate(actions_raw))
        temporal = tuple(self.temporal_rule(raw, i) for i, raw in enumerate(temporal_raw))
        # Names identify actions on the wire (Action.action) and `changed` compares them, so two rules (or a
        # rule and the default) with one name would make transitions invisible. Use codes to share an
        # integer action: STOP_PERSON and STOP_CAR may both have code STOP.
        seen = {default.name: 'default_action'}
        for rule in actions + temporal:
            if rule.name in seen:
                raise self.fail(f'{rule.path}.name', f'a name not already used by {seen[rule.name]}',
                                rule.name)
            seen[rule.name] = rule.path
        self.check_softmax_competition(actions)
        return PolicySpec(version=version, default_action=default, regions=MappingProxyType(regions),
                          actions=actions, temporal=temporal, source=self.source)

    def default_action(self, raw) -> DefaultAction:
        path = 'default_action'
        raw = self.mapping(raw, path, ('name', 'code'), required=('name', 'code'))
        return DefaultAction(name=self.name(raw['name'], f'{path}.name'), code=self.code(raw['code'], f'{path}.code'))

    def regions(self, raw) -> dict[str, Region]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise self.fail('regions', 'a mapping of region name -> {polygon: [[x, y], ...]}', raw)
        out = {}
        for name, entry in raw.items():
            if not isinstance(name, str) or not name.strip() or name != name.strip():
                raise self.fail(f'regions.{name}', 'a non-empty region name ("" is the full frame)', name)
            path = f'regions.{name}'
            entry = self.mapping(entry, path, ('polygon',), required=('polygon',))
            polygon = entry['polygon']
            ppath = f'{path}.polygon'
            if not isinstance(polygon, list):
                raise self.fail(ppath, 'a list of [x, y] vertices in normalised image coordinates', polygon)
            for i, vertex in enumerate(polygon):
                if (not isinstance(vertex, list) or len(vertex) != 2
                        or any(isinstance(c, bool) or not isinstance(c, (int, float)) for c in vertex)):
                    raise self.fail(f'{ppath}[{i}]', '[x, y] with two numbers in [0, 1]', vertex)
            try:
                out[name] = Region(name, tuple((float(x), float(y)) for x, y in polygon))
            except ValueError as err:
                raise PolicyError(self.source, ppath, 'a simple polygon of >= 3 vertices within [0, 1] '
                                  'with non-zero area', str(err)) from None
        return out

    def prompt_rule(self, raw, i: int, regions: Mapping[str, Region]) -> PromptRule:
        path = f'actions[{i}]'
        raw = self.mapping(raw, path, ('name', 'code', 'priority', 'region', 'prompts', 'contrast', 'score',
                                       'temperature', 'enter', 'exit', 'min_hold_s', 'cooldown_s'),
                           required=('name', 'code', 'priority', 'prompts', 'enter'))
        name = self.name(raw['name'], f'{path}.name')
        code = self.code(raw['code'], f'{path}.code')
        priority = self.priority(raw['priority'], f'{path}.priority')
        region = FULL_FRAME
        if 'region' in raw:
            region = raw['region']
            if not isinstance(region, str) or region not in regions:
                defined = ', '.join(regions) or 'none defined'
                raise self.fail(f'{path}.region', f'the name of a region under `regions` ({defined}); omit '
                                'the key for the full frame', region)
        score = raw.get('score', 'margin')
        if score not in SCORE_KINDS:
            raise self.fail(f'{path}.score', f'one of {", ".join(SCORE_KINDS)}', score)
        prompts = self.texts(raw['prompts'], f'{path}.prompts', 1, 'prompts')
        # margin needs something to be a margin over; softmax may borrow the other rules' prompts.
        contrast = self.texts(raw.get('contrast', []), f'{path}.contrast', 1 if score == 'margin' else 0,
                              'contrast prompts describing the safe scene')
        for j, text in enumerate(contrast):
            if text in prompts:
                raise self.fail(f'{path}.contrast[{j}]', 'a contrast prompt that is not also a positive prompt '
                                '(its margin could never be positive)', text)
        temperature = None
        if score == 'softmax':
            if 'temperature' not in raw:
                raise self.fail(f'{path}.temperature', 'a temperature > 0 for score: softmax '
                                '(e.g. 0.01-0.1 for cosine similarities)', _MISSING)
            temperature = self.number(raw['temperature'], f'{path}.temperature', lo=0.0, lo_open=True)
            lo, hi, lo_open = 0.0, 1.0, True             # softmax mass; enter 0 would always fire
        else:
            if 'temperature' in raw:
                raise self.fail(f'{path}.temperature', 'no temperature for score: margin (it applies to '
                                'softmax only)', raw['temperature'])
            lo, hi, lo_open = -2.0, 2.0, True            # difference of two cosines
        enter = self.number(raw['enter'], f'{path}.enter', lo, hi, lo_open)
        exit_ = enter
        if 'exit' in raw:
            exit_ = self.number(raw['exit'], f'{path}.exit', lo, hi, False)
            if exit_ > enter:
                raise self.fail(f'{path}.exit', f'exit <= enter ({enter:g}): the rule stays active down to '
                                'exit, so exit above enter would release a rule the moment it fired', raw['exit'])
        min_hold = self.number(raw.get('min_hold_s', 0.0), f'{path}.min_hold_s', lo=0.0, what='seconds')
        cooldown = self.number(raw.get('cooldown_s', 0.0), f'{path}.cooldown_s', lo=0.0, what='seconds')
        return PromptRule(name=name, code=code, priority=priority, prompts=prompts, contrast=contrast,
                          region=region, score=score, temperature=temperature, enter=enter, exit=exit_,
                          min_hold_s=min_hold, cooldown_s=cooldown, index=i)

    def temporal_rule(self, raw, i: int) -> TemporalRule:
        path = f'temporal[{i}]'
        raw = self.mapping(raw, path, ('name', 'code', 'priority', 'lookback_s', 'below_similarity',
                                       'exit_similarity', 'min_hold_s', 'cooldown_s'),
                           required=('name', 'code', 'priority', 'lookback_s', 'below_similarity'))
        name = self.name(raw['name'], f'{path}.name')
        code = self.code(raw['code'], f'{path}.code')
        priority = self.priority(raw['priority'], f'{path}.priority')
        lookback = self.number(raw['lookback_s'], f'{path}.lookback_s', lo=0.0, lo_open=True, what='seconds')
        below = self.number(raw['below_similarity'], f'{path}.below_similarity', -1.0, 1.0,
                            what='a cosine similarity')
        exit_sim = below
        if 'exit_similarity' in raw:
            exit_sim = self.number(raw['exit_similarity'], f'{path}.exit_similarity', -1.0, 1.0,
                                   what='a cosine similarity')
            if exit_sim < below:
                raise self.fail(f'{path}.exit_similarity', f'exit_similarity >= below_similarity ({below:g}): '
                                'lower similarity is riskier, so the rule releases when similarity recovers '
                                'above exit', raw['exit_similarity'])
        min_hold = self.number(raw.get('min_hold_s', 0.0), f'{path}.min_hold_s', lo=0.0, what='seconds')
        cooldown = self.number(raw.get('cooldown_s', 0.0), f'{path}.cooldown_s', lo=0.0, what='seconds')
        return TemporalRule(name=name, code=code, priority=priority, lookback_s=lookback, below_similarity=below,
                            exit_similarity=exit_sim, min_hold_s=min_hold, cooldown_s=cooldown, index=i)

    def check_softmax_competition(self, actions: tuple[PromptRule, ...]) -> None:
        for rule in actions:
            if rule.score == 'softmax' and not rule.contrast and not _competitors(rule, actions):
                raise self.fail(f'{rule.path}.contrast', 'at least one contrast prompt for score: softmax '
                                '(or other rules whose prompts compete); a softmax over the rule\'s own '
                                'prompts alone always sums to 1', list(rule.contrast))


def _join(path: str, key) -> str:
    return str(key) if path == '(top level)' else f'{path}.{key}'


def _range_text(lo, hi, lo_open) -> str:
    if lo is not None and hi is not None:
        return f' in {"(" if lo_open else "["}{lo:g}, {hi:g}]'
    if lo is not None:
        return f' {">" if lo_open else ">="} {lo:g}'
    if hi is not None:
        return f' <= {hi:g}'
    return ''


def _competitors(rule: PromptRule, actions) -> tuple[str, ...]:
    """Texts of every other prompt rule (prompts, then contrast), minus this rule's own prompts, in file order."""
    out: list[str] = []
    for other in actions:
        if other is rule:
            continue
        for text in other.prompts + other.contrast:
            if text not in rule.prompts and text not in out:
                out.append(text)
    return tuple(out)


# -- scoring (pure) ----------------------------------------------------------------------------------------
def score_margin(vec: np.ndarray, P: np.ndarray, C: np.ndarray) -> tuple[float, int]:
    """Margin of the best positive prompt over the best contrast prompt.

    vec: (d,) unit vector; P: (k, d) positive prompt rows, k >= 1; C: (m, d) contrast rows, m >= 1.
    Returns (max_i P_i.vec - max_j C_j.vec, argmax_i P_i.vec). Comparing with the contrast cancels the
    model's baseline cosine between any image and any text, which is what makes a threshold meaningful.
    """
    pos = np.asarray(P, dtype=np.float64) @ np.asarray(vec, dtype=np.float64)
    neg = np.asarray(C, dtype=np.float64) @ np.asarray(vec, dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f'score_margin needs >= 1 prompt and >= 1 contrast prompt, got {pos.size} and {neg.size}')
    best = int(np.argmax(pos))
    return float(pos[best] - np.max(neg)), best


def score_softmax(vec: np.ndarray, P: np.ndarray, C: np.ndarray, T: float) -> tuple[float, int]:
    """Probability mass of the positive prompts in softmax([P.vec, C.vec] / T).

    Returns (sum_i softmax_i over the positive rows, argmax_i P_i.vec). With C empty the mass is 1.
    Computed with the max subtracted (log-sum-exp) so small temperatures cannot overflow.
    """
    if not (T > 0 and math.isfinite(T)):
        raise ValueError(f'temperature must be a finite number > 0, got {T!r}')
    v = np.asarray(vec, dtype=np.float64)
    pos = np.asarray(P, dtype=np.float64) @ v
    if pos.size == 0:
        raise ValueError('score_softmax needs >= 1 prompt')
    neg = np.asarray(C, dtype=np.float64).reshape(-1, v.shape[0]) @ v
    logits = np.concatenate([pos, neg]) / T
    e = np.exp(logits - logits.max())
    best = int(np.argmax(pos))
    return float(e[:pos.size].sum() / e.sum()), best


# -- engine ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Observation:
    stamp_s: float                                     # message time of the frame (capture stamp)
    sequence: int
    vector: np.ndarray                                 # full-frame embedding
    regions: Mapping[str, np.ndarray] = field(default_factory=dict)   # region name -> embedding
    similarity_to_past: float | None = None            # from memory; None/NaN = unknown
    lookback_s: float | None = None                    # how far back that similarity looked (memory's setting)


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
    __slots__ = ('active', 'fired_at', 'cooldown_until')

    def __init__(self):
        self.active = False
        self.fired_at = -math.inf
        self.cooldown_until = -math.inf


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
        if texts:
            matrix = self._embed(embed_texts, texts)
            self.dim = matrix.shape[1]
            row = {t: i for i, t in enumerate(texts)}
            for rule in spec.actions:
                self._P[rule.name] = matrix[[row[t] for t in rule.prompts]]
                self._C[rule.name] = matrix[[row[t] for t in self._competitors[rule.name]]]
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

        evals = [self._step_prompt(r, views, stamp) for r in self.spec.actions]
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
            held = now < state.fired_at + rule.min_hold_s
            if stays:
                # Hysteresis: once active, a rule stays while its score is past the (laxer) exit threshold, so
                # a score flickering around `enter` does not toggle the robot between actions every frame.
                e.active, e.trigger = True, trigger
            elif held:
                # Minimum hold: a protective action lasts at least min_hold_s of message time after it fired,
                # bridging a few missed frames (a detector miss, a person briefly occluded).
                e.active, e.trigger = True, TRIGGER_HOLD
            else:
                # Release; cooldown stops a rule that just ended from re-firing at once (chatter).
                state.active = False
                state.cooldown_until = now + rule.cooldown_s
                self.logger.debug(f'policy: {rule.name} released at {now:.3f} s')
        elif fires:
            if now < state.cooldown_until:
                e.blocked = True
            else:
                state.active, state.fired_at = True, now
                e.active, e.trigger = True, trigger
                self.logger.debug(f'policy: {rule.name} fired at {now:.3f} s (score {e.score:.3f})')

    def _step_prompt(self, rule: PromptRule, views, now: float) -> _Eval:
        v = views[rule.region]
        if rule.score == 'margin':
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
            until = state.fired_at + rule.min_hold_s
            e.text = (f'{rule.name}: held until {until:.3f} s by min_hold {rule.min_hold_s:g} s '
                      f'({what} < exit {rule.exit:.3f})')
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
        # fire nor keep the rule active on its own; only min_hold can carry an active rule through it.
        self._transition(e, state, now, fires=known and s < rule.below_similarity,
                         stays=known and s < rule.exit_similarity, trigger=TRIGGER_MEMORY)
        sim = f'similarity to the scene {rule.lookback_s:g} s ago ' + (f'{s:.3f}' if known else 'unknown')
        if e.trigger == TRIGGER_HOLD:
            until = state.fired_at + rule.min_hold_s
            e.text = f'{rule.name}: held until {until:.3f} s by min_hold {rule.min_hold_s:g} s ({sim})'
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
