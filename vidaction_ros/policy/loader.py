"""Policy files: safe YAML loading (a repeated key is an error) and validation of every key into a PolicySpec.

File format (``load_policy``; every key is validated, unknown keys are errors)::

    version: 1
    default_action: {name: CONTINUE, code: CONTINUE}
    regions:
      near_zone: {polygon: [[0.0, 0.47], [1.0, 0.90], [1.0, 1.0], [0.0, 1.0]]}
    actions:
      - {name: STOP, code: STOP, priority: 200, region: near_zone, prompts: [...], contrast: [...],
         score: margin, enter: 0.10, exit: 0.06, min_hold_s: 1.0, min_clear_s: 0.5, cooldown_s: 0.0}
    temporal:
      - {name: HOVER, code: HOVER, priority: 150, lookback_s: 2.0, below_similarity: 0.80,
         exit_similarity: 0.85, min_hold_s: 1.0, min_clear_s: 0.5, cooldown_s: 0.0}
"""
from __future__ import annotations

import difflib
import math
import os
from types import MappingProxyType
from typing import Any, Mapping

import yaml

from ..perception.regions import FULL_FRAME, Region
from .scoring import _competitors
from .spec import (ACTION_CODES, MIN_CLEAR_DEFAULT_S, POLICY_VERSION, PRIORITY_NAMES, SCORE_KINDS, DefaultAction,
                   PolicyError, PolicySpec, PromptRule, TemporalRule)


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
                                       'temperature', 'enter', 'exit', 'min_hold_s', 'min_clear_s', 'cooldown_s'),
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
        timing = self.timing(raw, path)
        return PromptRule(name=name, code=code, priority=priority, prompts=prompts, contrast=contrast,
                          region=region, score=score, temperature=temperature, enter=enter, exit=exit_,
                          **timing, index=i)

    def timing(self, raw, path: str) -> dict:
        """A rule's hold, cooldown and clear times (seconds of message time), as the rule's keyword arguments."""
        return {'min_hold_s': self.number(raw.get('min_hold_s', 0.0), f'{path}.min_hold_s', lo=0.0, what='seconds'),
                'cooldown_s': self.number(raw.get('cooldown_s', 0.0), f'{path}.cooldown_s', lo=0.0, what='seconds'),
                'min_clear_s': self.number(raw.get('min_clear_s', MIN_CLEAR_DEFAULT_S), f'{path}.min_clear_s',
                                           lo=0.0, what='seconds')}

    def temporal_rule(self, raw, i: int) -> TemporalRule:
        path = f'temporal[{i}]'
        raw = self.mapping(raw, path, ('name', 'code', 'priority', 'lookback_s', 'below_similarity',
                                       'exit_similarity', 'min_hold_s', 'min_clear_s', 'cooldown_s'),
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
        timing = self.timing(raw, path)
        return TemporalRule(name=name, code=code, priority=priority, lookback_s=lookback, below_similarity=below,
                            exit_similarity=exit_sim, **timing, index=i)

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
