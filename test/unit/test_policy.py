"""Action policy: file validation, calibrated scores and the per-rule state machines (no ROS).

Prompts are embedded by a fake `embed_texts` that maps each known string to a hand-made 4-d unit vector,
and frames are built from those axes, so every score below is computable by hand: with the contrast on an
axis the frame does not touch, a rule's margin is exactly the frame's component along its prompt's axis.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vidaction_ros.policy import (ACTION_CODES, Decision, Observation, PolicyEngine, PolicyError, load_policy,
                                  parse_policy, score_margin, score_softmax)
from vidaction_ros.perception.regions import FULL_FRAME, Region

# ---------------------------------------------------------------------------------------------------------
# fixtures: a fake text embedder over 4 axes

AXES = {
    'a person': [1.0, 0.0, 0.0, 0.0],
    'an empty lawn': [0.0, 1.0, 0.0, 0.0],
    'a quiet street': [0.0, 0.0, 1.0, 0.0],
    'a car': [0.0, 0.0, 0.0, 1.0],
}


class FakeEmbed:
    def __init__(self, table=None, scale=1.0):
        self.table = AXES if table is None else table
        self.scale = scale
        self.calls: list[list[str]] = []

    def __call__(self, texts):
        self.calls.append(list(texts))
        return np.array([self.table[t] for t in texts], dtype=np.float32) * self.scale


class ListLogger:
    def __init__(self):
        self.warnings: list[str] = []

    def warning(self, msg):
        self.warnings.append(msg)

    def debug(self, msg):
        pass

    info = debug


def frame(person=0.0, lawn=0.0, car=0.0) -> np.ndarray:
    """Unit vector with the given cosines to 'a person', 'an empty lawn' and 'a car'; the rest on axis 3."""
    rest = 1.0 - person ** 2 - lawn ** 2 - car ** 2
    assert rest >= -1e-12
    return np.array([person, lawn, math.sqrt(max(rest, 0.0)), car])


def rule(name, code, priority, prompts=('a person',), contrast=('an empty lawn',), enter=0.25, **kw) -> dict:
    d = {'name': name, 'code': code, 'priority': priority, 'prompts': list(prompts), 'enter': enter}
    if contrast is not None:
        d['contrast'] = list(contrast)
    d.update(kw)
    return d


def engine(actions=(), temporal=(), regions=None, logger=None, embed=None):
    # Each mechanism is tested alone: rules release as soon as hysteresis / hold / cooldown let them unless a
    # test asks for min_clear_s (its own tests below); the file default is tested in test_defaults_and_codes.
    data = {'version': 1, 'default_action': {'name': 'CONTINUE', 'code': 'CONTINUE'},
            'actions': [{'min_clear_s': 0.0, **r} for r in actions],
            'temporal': [{'min_clear_s': 0.0, **r} for r in temporal]}
    if regions:
        data['regions'] = regions
    return PolicyEngine(parse_policy(data), embed or FakeEmbed(), logger=logger or ListLogger())


def obs(t, vector=None, seq=0, regions=None, sim=None, lookback=None, **axes) -> Observation:
    v = frame(**axes) if vector is None else vector
    return Observation(stamp_s=t, sequence=seq, vector=v, regions=regions or {}, similarity_to_past=sim,
                       lookback_s=lookback)


# ---------------------------------------------------------------------------------------------------------
# policy files: one bad file per row; the error must name the file and the field

BASE = """\
version: 1
default_action: {name: CONTINUE, code: CONTINUE}
regions:
  near_zone: {polygon: [[0.0, 0.47], [1.0, 0.90], [1.0, 1.0], [0.0, 1.0]]}
actions:
  - name: SLOW
    code: SLOW_DOWN
    priority: 100
    prompts: [a car]
    contrast: [an empty lawn]
    enter: 0.2
  - name: STOP
    code: STOP
    priority: 200
    region: near_zone
    prompts: [a person]
    contrast: [an empty lawn]
    score: margin
    enter: 0.10
    exit: 0.06
    min_hold_s: 1.0
    cooldown_s: 0.0
temporal:
  - name: HOVER
    code: HOVER
    priority: 150
    lookback_s: 2.0
    below_similarity: 0.80
    exit_similarity: 0.85
"""


def edit(old: str, new: str) -> str:
    assert BASE.count(old) == 1, old
    return BASE.replace(old, new)


BAD_FILES = [
    # (id, file text, field path named in the error, another fragment the error must contain)
    ('missing-field', edit('    enter: 0.10\n', ''), 'actions[1].enter', 'field missing'),
    ('unknown-key-typo', edit('    exit: 0.06', '    exitt: 0.06'), 'actions[1].exitt', "did you mean 'exit'"),
    ('unknown-top-level-key', edit('temporal:', 'temporl:'), 'temporl', "did you mean 'temporal'"),
    ('wrong-type', edit('enter: 0.10', 'enter: high'), 'actions[1].enter', "'high' (str)"),
    ('bool-as-number', edit('min_hold_s: 1.0', 'min_hold_s: true'), 'actions[1].min_hold_s', 'True (bool)'),
    ('bool-as-priority', edit('priority: 200', 'priority: yes'), 'actions[1].priority', 'True (bool)'),
    ('priority-out-of-range', edit('priority: 200', 'priority: 256'), 'actions[1].priority', '1..255'),
    ('exit-above-enter', edit('exit: 0.06', 'exit: 0.2'), 'actions[1].exit', 'exit <= enter'),
    ('enter-not-finite', edit('enter: 0.10', 'enter: .nan'), 'actions[1].enter', 'finite'),
    ('unknown-region', edit('region: near_zone', 'region: far_zone'), 'actions[1].region', "'far_zone'"),
    ('unknown-code', edit('code: STOP', 'code: HALT'), 'actions[1].code', 'EMERGENCY_BRAKE'),
    ('code-as-integer', edit('code: STOP', 'code: 3'), 'actions[1].code', '3 (int)'),
    ('empty-prompts', edit('prompts: [a person]', 'prompts: []'), 'actions[1].prompts', 'at least 1 item'),
    ('blank-prompt', edit('prompts: [a person]', "prompts: ['  ']"), 'actions[1].prompts[0]', 'non-empty'),
    ('prompts-not-a-list', edit('prompts: [a person]', 'prompts: a person'), 'actions[1].prompts', 'a list'),
    ('margin-without-contrast', edit('    contrast: [an empty lawn]\n    score: margin', '    score: margin'),
     'actions[1].contrast', 'at least 1 item'),
    ('contrast-equals-prompt', edit('contrast: [an empty lawn]\n    score', 'contrast: [a person]\n    score'),
     'actions[1].contrast[0]', 'not also a positive prompt'),
    ('unknown-score-kind', edit('score: margin', 'score: cosine'), 'actions[1].score', 'margin, softmax'),
    ('softmax-without-temperature', edit('score: margin', 'score: softmax'), 'actions[1].temperature',
     'field missing'),
    ('softmax-zero-temperature', edit('score: margin', 'score: softmax\n    temperature: 0'),
     'actions[1].temperature', '> 0'),
    ('temperature-with-margin', edit('score: margin', 'score: margin\n    temperature: 0.05'),
     'actions[1].temperature', 'softmax only'),
    ('negative-hold', edit('min_hold_s: 1.0', 'min_hold_s: -1'), 'actions[1].min_hold_s', '>= 0'),
    ('negative-clear', edit('min_hold_s: 1.0', 'min_hold_s: 1.0\n    min_clear_s: -0.5'), 'actions[1].min_clear_s',
     '>= 0'),
    ('text-clear', edit('min_hold_s: 1.0', 'min_hold_s: 1.0\n    min_clear_s: soon'), 'actions[1].min_clear_s',
     'soon'),
    ('negative-cooldown', edit('cooldown_s: 0.0', 'cooldown_s: -0.5'), 'actions[1].cooldown_s', '>= 0'),
    ('polygon-outside-image', edit('[1.0, 0.90]', '[1.5, 0.90]'), 'regions.near_zone.polygon', 'outside'),
    ('polygon-zero-area', edit('[[0.0, 0.47], [1.0, 0.90], [1.0, 1.0], [0.0, 1.0]]',
                               '[[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]]'), 'regions.near_zone.polygon', 'zero area'),
    ('polygon-two-vertices', edit('[[0.0, 0.47], [1.0, 0.90], [1.0, 1.0], [0.0, 1.0]]', '[[0.0, 0.47], [1.0, 0.9]]'),
     'regions.near_zone.polygon', 'at least 3'),
    ('polygon-bad-vertex', edit('[1.0, 0.90]', '[1.0]'), 'regions.near_zone.polygon[1]', '[x, y]'),
    ('region-unknown-key', edit('{polygon:', '{polgon:'), 'regions.near_zone.polgon', "did you mean 'polygon'"),
    ('duplicate-names', edit('name: SLOW', 'name: STOP'), 'actions[1].name', 'already used by actions[0]'),
    ('name-clashes-with-default', edit('name: HOVER', 'name: CONTINUE'), 'temporal[0].name',
     'already used by default_action'),
    ('rule-not-a-mapping', edit('temporal:\n  - name: HOVER', 'temporal:\n  - HOVER\n  - name: HOVER'),
     'temporal[0]', 'a mapping'),
    ('default-missing-code', edit('{name: CONTINUE, code: CONTINUE}', '{name: CONTINUE}'),
     'default_action.code', 'field missing'),
    ('exit-similarity-below', edit('exit_similarity: 0.85', 'exit_similarity: 0.70'),
     'temporal[0].exit_similarity', '>= below_similarity'),
    ('similarity-out-of-range', edit('below_similarity: 0.80', 'below_similarity: 1.5'),
     'temporal[0].below_similarity', '[-1, 1]'),
    ('zero-lookback', edit('lookback_s: 2.0', 'lookback_s: 0'), 'temporal[0].lookback_s', '> 0'),
    ('wrong-version', edit('version: 1', 'version: 2'), 'version', '2 (int)'),
    ('version-as-string', edit('version: 1', "version: '1'"), 'version', "'1' (str)"),
    ('missing-version', edit('version: 1\n', ''), 'version', 'field missing'),
    ('actions-not-a-list', BASE.split('actions:')[0] + 'actions: {name: STOP}\n', 'actions', 'a list'),
    ('no-rules', 'version: 1\nactions: []\n', 'actions', 'at least one rule'),
    ('not-a-mapping', '- just\n- a list\n', '(top level)', 'a mapping'),
    ('empty-file', '', '(top level)', 'empty document'),
    ('yaml-syntax-error', edit('enter: 0.10', 'enter: [0.10'), '(yaml)', 'line'),
    ('duplicate-yaml-key', edit('    exit: 0.06', '    exit: 0.06\n    enter: 0.2'), '(yaml)',
     "duplicate key 'enter' (first at line 19)"),
]


@pytest.mark.parametrize('text, path, fragment', [row[1:] for row in BAD_FILES], ids=[row[0] for row in BAD_FILES])
def test_bad_policy_file_names_file_and_field(tmp_path, text, path, fragment):
    f = tmp_path / 'bad_policy.yaml'
    f.write_text(text)
    with pytest.raises(PolicyError) as err:
        load_policy(f)
    msg = str(err.value)
    assert str(f) in msg
    assert f': {path}: ' in msg, msg
    assert 'expected' in msg and 'got' in msg
    assert fragment in msg, msg
    assert err.value.path == path
    assert isinstance(err.value, ValueError)      # callers catching ValueError see policy errors too


def test_bad_files_table_is_large_enough():
    assert len(BAD_FILES) >= 12


def test_base_file_is_valid(tmp_path):
    f = tmp_path / 'good.yaml'
    f.write_text(BASE)
    spec = load_policy(f)
    assert spec.source == str(f)
    assert [r.name for r in spec.rules] == ['SLOW', 'STOP', 'HOVER']
    assert set(spec.regions) == {'near_zone'} and isinstance(spec.regions['near_zone'], Region)


def test_yaml_merge_keys_may_still_be_overridden(tmp_path):
    # Repeated keys are errors, but overriding a key brought in by a merge is the point of `<<`.
    f = tmp_path / 'merge.yaml'
    f.write_text('version: 1\nactions:\n'
                 '  - &stop {name: STOP, code: STOP, priority: 200, prompts: [a person], '
                 'contrast: [an empty lawn], enter: 0.3}\n'
                 '  - <<: *stop\n    name: STOP_NEAR\n    enter: 0.2\n')
    a, b = load_policy(f).actions
    assert (a.name, a.enter, b.name, b.enter, b.prompts) == ('STOP', 0.3, 'STOP_NEAR', 0.2, ('a person',))


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / 'nowhere' / 'policy.yaml'
    with pytest.raises(PolicyError, match='no such file') as err:
        load_policy(path)
    assert str(path) in str(err.value)


def test_parse_policy_errors_name_dict_source():
    with pytest.raises(PolicyError) as err:
        parse_policy({'version': 1, 'actions': [rule('STOP', 'STOP', 200, enter=True)]})
    assert str(err.value).startswith('<dict>: actions[0].enter: expected')


BRIEF_EXAMPLE = """\
version: 1
default_action: {name: CONTINUE, code: CONTINUE}
regions:
  near_zone: {polygon: [[0.0, 0.47], [1.0, 0.90], [1.0, 1.0], [0.0, 1.0]]}
actions:
  - name: STOP
    code: STOP
    priority: 200
    region: near_zone
    prompts: ["a person walking on the grass right in front of the camera"]
    contrast: ["an empty lawn"]
    score: softmax
    temperature: 0.05
    enter: 0.10
    exit: 0.06
    min_hold_s: 1.0
    cooldown_s: 0.0
temporal:
  - name: HOVER
    code: HOVER
    priority: 150
    lookback_s: 2.0
    below_similarity: 0.80
    exit_similarity: 0.85
    min_hold_s: 1.0
    cooldown_s: 0.0
"""


def test_full_format_parses_to_the_spec(tmp_path):
    f = tmp_path / 'p.yaml'
    f.write_text(BRIEF_EXAMPLE)
    spec = load_policy(f)
    assert spec.version == 1
    assert (spec.default_action.name, spec.default_action.code) == ('CONTINUE', 0)
    stop, = spec.actions
    assert (stop.name, stop.code, stop.priority, stop.region) == ('STOP', 3, 200, 'near_zone')
    assert stop.prompts == ('a person walking on the grass right in front of the camera',)
    assert stop.contrast == ('an empty lawn',)
    assert (stop.score, stop.temperature, stop.enter, stop.exit) == ('softmax', 0.05, 0.10, 0.06)
    assert (stop.min_hold_s, stop.cooldown_s) == (1.0, 0.0)
    hover, = spec.temporal
    assert (hover.name, hover.code, hover.priority, hover.lookback_s) == ('HOVER', 2, 150, 2.0)
    assert (hover.below_similarity, hover.exit_similarity, hover.min_hold_s) == (0.80, 0.85, 1.0)


def test_defaults_and_codes():
    assert dict(ACTION_CODES) == {'CONTINUE': 0, 'SLOW_DOWN': 1, 'HOVER': 2, 'STOP': 3, 'EMERGENCY_BRAKE': 4,
                                  'FAILSAFE': 5, 'CUSTOM': 255}
    spec = parse_policy({'version': 1, 'regions': None,
                         'actions': [rule('BRAKE', 'EMERGENCY_BRAKE', 'CRITICAL', enter=0.3)],
                         'temporal': None})
    r, = spec.actions
    # exit defaults to enter (no hysteresis); full frame; margin; no hold or cooldown; CONTINUE default;
    # released only after half a second past exit (the documented min_clear_s default).
    assert (r.exit, r.region, r.score, r.min_hold_s, r.cooldown_s) == (0.3, FULL_FRAME, 'margin', 0.0, 0.0)
    assert r.min_clear_s == 0.5
    assert (r.code, r.priority) == (4, 255)
    assert (spec.default_action.name, spec.default_action.code) == ('CONTINUE', 0)
    t = parse_policy({'version': 1, 'temporal': [{'name': 'H', 'code': 'HOVER', 'priority': 1,
                                                  'lookback_s': 1, 'below_similarity': 0.5}]}).temporal[0]
    assert t.exit_similarity == 0.5 and t.lookback_s == 1.0 and t.min_clear_s == 0.5


def test_the_package_default_policy_is_valid():
    import os
    path = os.path.join(os.path.dirname(__file__), '..', '..', 'config', 'policy.yaml')
    if not os.path.exists(path):
        pytest.skip('no config/policy.yaml')
    spec = load_policy(path)
    assert spec.actions


# ---------------------------------------------------------------------------------------------------------
# scoring functions, against hand-computed values

def test_score_margin_by_hand_3d():
    v = np.array([1.0, 0.0, 0.0])
    P = np.array([[0.6, 0.8, 0.0], [0.8, 0.6, 0.0]])     # cosines 0.6, 0.8
    C = np.array([[0.0, 1.0, 0.0], [0.5, 0.0, math.sqrt(0.75)]])   # cosines 0.0, 0.5
    score, best = score_margin(v, P, C)
    assert best == 1
    assert score == pytest.approx(0.8 - 0.5)


def test_score_margin_negative_when_contrast_wins_4d():
    v = np.array([0.5, 0.5, 0.5, 0.5])
    P = np.array([[1.0, 0.0, 0.0, 0.0]])                    # 0.5
    C = np.array([[0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 1.0]])   # 1.0, 0.5
    assert score_margin(v, P, C) == (pytest.approx(-0.5), 0)


def test_score_margin_needs_contrast():
    with pytest.raises(ValueError, match='contrast'):
        score_margin(np.array([1.0, 0, 0]), np.eye(3)[:1], np.zeros((0, 3)))


def test_score_softmax_by_hand():
    v = np.array([1.0, 0.0, 0.0])
    P = np.array([[0.6, 0.8, 0.0], [0.8, 0.6, 0.0]])       # cosines 0.6, 0.8
    C = np.array([[0.0, 1.0, 0.0]])                         # cosine 0.0
    T = 0.1
    score, best = score_softmax(v, P, C, T)
    e6, e8, e0 = math.exp(6.0), math.exp(8.0), math.exp(0.0)
    assert best == 1
    assert score == pytest.approx((e6 + e8) / (e6 + e8 + e0))
    # Temperature 1: nearly uniform over three candidates -> about 2/3 with a small tilt.
    score1, _ = score_softmax(v, P, C, 1.0)
    assert score1 == pytest.approx((math.exp(0.6) + math.exp(0.8)) / (math.exp(0.6) + math.exp(0.8) + 1.0))


def test_score_softmax_edge_cases():
    v = np.array([0.0, 1.0, 0.0, 0.0])
    P = np.array([[1.0, 0.0, 0.0, 0.0]])
    C = np.array([[0.0, 1.0, 0.0, 0.0]])
    # Tiny temperature: exp(1/1e-4) would overflow without the max subtracted.
    score, _ = score_softmax(v, P, C, 1e-4)
    assert score == 0.0
    assert score_softmax(v, P, np.zeros((0, 4)), 0.1) == (1.0, 0)
    with pytest.raises(ValueError, match='temperature'):
        score_softmax(v, P, C, 0.0)


# ---------------------------------------------------------------------------------------------------------
# engine: construction and input validation

def test_prompts_embedded_once_deduplicated():
    fake = FakeEmbed()
    eng = engine([rule('STOP', 'STOP', 200), rule('SLOW', 'SLOW_DOWN', 100, prompts=['a car'])], embed=fake)
    assert fake.calls == [['a person', 'an empty lawn', 'a car']]
    assert eng.texts == ('a person', 'an empty lawn', 'a car') and eng.dim == 4
    for t in range(5):
        eng.decide(obs(t, person=0.5))
    assert len(fake.calls) == 1


def test_text_rows_are_normalised():
    # Prompt vectors returned with norm 3: the scores must still be cosines.
    eng = engine([rule('STOP', 'STOP', 200)], embed=FakeEmbed(scale=3.0))
    assert eng.decide(obs(0, person=0.5)).score == pytest.approx(0.5)


@pytest.mark.parametrize('table, match', [
    ({'a person': [1.0, 0.0], 'an empty lawn': [float('nan'), 1.0]}, 'non-finite.*an empty lawn'),
    ({'a person': [0.0, 0.0], 'an empty lawn': [0.0, 1.0]}, "zero vector.*'a person'"),
])
def test_bad_text_embeddings_are_rejected(table, match):
    with pytest.raises(ValueError, match=match):
        engine([rule('STOP', 'STOP', 200)], embed=FakeEmbed(table))


def test_text_embedding_shape_is_checked():
    with pytest.raises(ValueError, match=r'shape \(1, 4\) for 2 texts'):
        engine([rule('STOP', 'STOP', 200)], embed=lambda texts: np.ones((1, 4)))
    with pytest.raises(ValueError, match='shape'):
        engine([rule('STOP', 'STOP', 200)], embed=lambda texts: np.ones(4))


def test_required_regions_and_lookbacks():
    regions = {'near_zone': {'polygon': [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]},
               'unused': {'polygon': [[0, 0], [1, 0], [1, 0.5]]}}
    eng = engine([rule('STOP', 'STOP', 200, region='near_zone'), rule('SLOW', 'SLOW_DOWN', 100)],
                 temporal=[{'name': 'H', 'code': 'HOVER', 'priority': 1, 'lookback_s': 2.0,
                            'below_similarity': 0.5}], regions=regions)
    assert eng.required_regions == ['near_zone']
    assert eng.required_lookbacks == [2.0]
    assert set(eng.spec.regions) == {'near_zone', 'unused'}   # the embedder may embed all of them


def test_observation_validation():
    eng = engine([rule('STOP', 'STOP', 200, region='near_zone')],
                 regions={'near_zone': {'polygon': [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]}})
    good = {'near_zone': frame()}
    with pytest.raises(ValueError, match=r'shape \(4,\).*got shape \(3,\)'):
        eng.decide(obs(0, vector=np.array([1.0, 0.0, 0.0]), regions=good))
    with pytest.raises(ValueError, match='non-finite'):
        eng.decide(obs(0, vector=np.array([np.nan, 0, 0, 1.0]), regions=good))
    with pytest.raises(ValueError, match='all zeros'):
        eng.decide(obs(0, vector=np.zeros(4), regions=good))
    with pytest.raises(ValueError, match="region 'near_zone'"):
        eng.decide(obs(0, regions={'other': frame()}))
    with pytest.raises(ValueError, match="region 'near_zone'.*non-finite"):
        eng.decide(obs(0, regions={'near_zone': np.array([np.inf, 0, 0, 0])}))
    with pytest.raises(ValueError, match='stamp_s'):
        eng.decide(obs(float('nan'), regions=good))
    with pytest.raises(ValueError, match='similarity_to_past'):
        eng.decide(obs(0, regions=good, sim=1.5))
    # Invalid input leaves no trace: the first valid decision is still the first (changed=True).
    assert eng.decide(obs(0, regions=good)).changed


def test_unnormalised_frame_vector_is_normalised():
    eng = engine([rule('STOP', 'STOP', 200)])
    assert eng.decide(obs(0, vector=frame(person=0.5) * 7.0)).score == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------------------
# engine: decisions

def run(eng, steps, **common):
    """steps: (t, person, car) triples -> decisions."""
    return [eng.decide(obs(t, person=p, car=c, seq=i, **common)) for i, (t, p, c) in enumerate(steps)]


def test_default_decision_fields():
    eng = engine([rule('STOP', 'STOP', 200)])
    d = eng.decide(obs(0.0, person=0.125))
    assert isinstance(d, Decision)
    assert (d.action, d.action_code, d.priority, d.trigger, d.changed) == ('CONTINUE', 0, 0, 'default', True)
    assert math.isnan(d.score) and math.isnan(d.threshold)
    assert (d.matched_prompt, d.region, d.active) == ('', '', ())
    assert d.scores == {'STOP': pytest.approx(0.125)}
    assert d.reason.startswith('CONTINUE: no rule active') and 'STOP margin 0.125 < 0.250' in d.reason


def test_fired_decision_fields_and_reason():
    eng = engine([rule('STOP', 'STOP', 200, region='near_zone')],
                 regions={'near_zone': {'polygon': [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]}})
    # A person in the full frame but not in the near zone: the rule looks only at its region.
    d = eng.decide(obs(0, person=0.5, regions={'near_zone': frame(person=0.0)}))
    assert d.action == 'CONTINUE'
    d = eng.decide(obs(1, person=0.0, regions={'near_zone': frame(person=0.5)}))
    assert (d.action, d.action_code, d.priority, d.trigger, d.changed) == ('STOP', 3, 200, 'prompt', True)
    assert (d.score, d.threshold) == (pytest.approx(0.5), 0.25)
    assert (d.matched_prompt, d.region) == ('a person', 'near_zone')
    assert d.reason == "STOP: near_zone 'a person' margin 0.500 >= 0.250"


def test_enter_threshold_is_inclusive():
    eng = engine([rule('STOP', 'STOP', 200, enter=0.25)])
    assert eng.decide(obs(0, person=0.25)).action == 'STOP'   # 0.25 is exact in binary: score == enter


def test_hysteresis_enter_exit_band():
    eng = engine([rule('STOP', 'STOP', 200, enter=0.25, exit=0.125)])
    #        t   score   expected active
    seq = [(0, 0.0, False), (1, 0.1875, False),   # below enter: never fires, even inside the band
           (2, 0.25, True),                          # reaches enter: fires
           (3, 0.1875, True), (4, 0.125, True),     # inside the band, and at exit: stays
           (5, 0.0625, False),                       # below exit: releases
           (6, 0.1875, False),                       # back in the band but inactive: needs enter again
           (7, 0.5, True)]
    decisions = [eng.decide(obs(t, person=s)) for t, s, _ in seq]
    assert [d.action == 'STOP' for d in decisions] == [a for *_, a in seq]
    assert [d.changed for d in decisions] == [True, False, True, False, False, True, False, True]
    assert decisions[3].trigger == 'prompt' and 'hysteresis' in decisions[3].reason
    assert 'exit 0.125' in decisions[3].reason and decisions[3].threshold == 0.25


def test_min_hold_keeps_action_after_score_drops():
    eng = engine([rule('STOP', 'STOP', 200, enter=0.25, min_hold_s=1.0)])
    steps = [(0.0, 0.5), (0.5, 0.0), (0.75, 0.0), (0.875, 0.5), (1.0, 0.0), (1.5, 0.0)]
    d = [eng.decide(obs(t, person=s)) for t, s in steps]
    assert [x.action for x in d] == ['STOP', 'STOP', 'STOP', 'STOP', 'CONTINUE', 'CONTINUE']
    assert [x.trigger for x in d] == ['prompt', 'hold', 'hold', 'prompt', 'default', 'default']
    # Held frames report this frame's score (for calibration) and the enter threshold.
    assert d[1].score == pytest.approx(0.0) and d[1].threshold == 0.25
    assert 'held until 1.000 s by min_hold 1 s' in d[1].reason
    # The hold is measured from firing (t=0), not from the last frame above threshold (t=0.875): released at 1.0.
    assert d[4].changed


# Frames every 0.125 s (exact in binary), enter 0.25, exit 0.125, min_clear 0.5 s = four frames past exit.
def _clear_run(scores, **kw):
    eng = engine([rule('STOP', 'STOP', 200, enter=0.25, exit=0.125, min_clear_s=0.5, **kw)])
    return [eng.decide(obs(i * 0.125, person=s)) for i, s in enumerate(scores)]


def test_min_clear_bridges_a_dip_below_exit():
    # Fires, dips below exit for three frames (0.375 s < 0.5 s), comes back: one STOP, never a CONTINUE.
    d = _clear_run([0.5, 0.0, 0.0, 0.0, 0.5, 0.5])
    assert [x.action for x in d] == ['STOP'] * 6
    assert [x.trigger for x in d] == ['prompt', 'hold', 'hold', 'hold', 'prompt', 'prompt']
    assert sum(x.changed for x in d) == 1
    assert 'held until 0.625 s by min_clear 0.5 s (past exit since 0.125 s)' in d[1].reason


def test_min_clear_releases_after_evidence_stays_below_exit():
    # Below exit from t=0.25: held at 0.25, 0.375, 0.5, 0.625; released at 0.75 = 0.25 + 0.5.
    d = _clear_run([0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert [x.action for x in d] == ['STOP'] * 6 + ['CONTINUE'] * 2
    assert d[6].changed                                  # frame 6 is t = 0.75 s


def test_min_clear_restarts_when_the_evidence_returns():
    # Inside the hysteresis band (>= exit) counts as evidence: the clear timer restarts from the next dip.
    d = _clear_run([0.5, 0.0, 0.0, 0.1875, 0.0, 0.0, 0.0, 0.0, 0.0])
    # dip 1 at 0.125-0.25, back in the band at 0.375, dip 2 from 0.5: released at 1.0 (frame 8)
    assert [x.action for x in d] == ['STOP'] * 8 + ['CONTINUE']


def test_min_clear_and_min_hold_the_later_one_releases():
    # min_hold 1.0 s outlasts min_clear: held to 1.0 s although the evidence went at 0.125 s.
    d = _clear_run([0.5] + [0.0] * 9, min_hold_s=1.0)
    assert [x.action for x in d] == ['STOP'] * 8 + ['CONTINUE'] * 2
    assert 'by min_hold 1 s' in d[7].reason


def test_min_clear_holds_a_memory_rule_too():
    eng = engine(temporal=[dict(HOVER, min_clear_s=0.5)])
    sims = [0.5, 0.9, 0.9, 0.9, 0.9, 0.9]
    d = [eng.decide(obs(i * 0.125, sim=s, lookback=2.0)) for i, s in enumerate(sims)]
    # fires at 0 s; similarity recovers above exit (0.85) at 0.125 s: released at 0.625 s = 0.125 + 0.5 (frame 5)
    assert [x.action for x in d] == ['HOVER'] * 5 + ['CONTINUE']


def test_cooldown_blocks_refire():
    eng = engine([rule('STOP', 'STOP', 200, enter=0.25, cooldown_s=2.0)])
    steps = [(0.0, 0.5), (1.0, 0.0), (2.0, 0.5), (2.5, 0.5), (3.0, 0.5)]
    d = [eng.decide(obs(t, person=s)) for t, s in steps]
    # Fired at 0, released at 1 -> cannot fire before 1 + 2 = 3; fires again exactly at 3.
    assert [x.action for x in d] == ['STOP', 'CONTINUE', 'CONTINUE', 'CONTINUE', 'STOP']
    assert 'cooling down until 3.000 s' in d[2].reason


def test_priority_preemption_and_release():
    eng = engine([rule('SLOW', 'SLOW_DOWN', 100, prompts=['a car']), rule('STOP', 'STOP', 200)])
    d = run(eng, [(0, 0.0, 0.5), (1, 0.5, 0.5), (2, 0.0, 0.5), (3, 0.0, 0.0)])
    assert [x.action for x in d] == ['SLOW', 'STOP', 'SLOW', 'CONTINUE']
    assert [x.action_code for x in d] == [1, 3, 1, 0]
    assert [x.changed for x in d] == [True, True, True, True]
    assert d[1].active == ('STOP', 'SLOW') and 'pre-empts SLOW (100)' in d[1].reason
    assert d[1].scores == {'SLOW': pytest.approx(0.5), 'STOP': pytest.approx(0.5)}


@pytest.mark.parametrize('order', [('A', 'B'), ('B', 'A')])
def test_priority_ties_resolve_by_file_order(order):
    rules = {'A': rule('A', 'SLOW_DOWN', 100, prompts=['a car']), 'B': rule('B', 'STOP', 100)}
    eng = engine([rules[n] for n in order])
    d = eng.decide(obs(0, person=0.5, car=0.5))
    assert d.action == order[0] and d.active == order


def test_prompt_rule_beats_temporal_rule_on_a_tie():
    eng = engine([rule('STOP', 'STOP', 150)],
                 temporal=[{'name': 'HOVER', 'code': 'HOVER', 'priority': 150, 'lookback_s': 2,
                            'below_similarity': 0.8}])
    assert eng.decide(obs(0, person=0.5, sim=0.5)).action == 'STOP'


def test_changed_flags_over_a_sequence():
    eng = engine([rule('STOP', 'STOP', 200)])
    d = [eng.decide(obs(t, person=s)) for t, s in enumerate([0, 0, 0.5, 0.5, 0, 0.5])]
    assert [x.changed for x in d] == [True, False, True, False, True, True]


def test_time_going_backwards_resets_rule_states():
    log = ListLogger()
    eng = engine([rule('STOP', 'STOP', 200, min_hold_s=10.0)], logger=log)
    assert eng.decide(obs(100.0, person=0.5)).action == 'STOP'
    assert eng.decide(obs(101.0, person=0.0)).trigger == 'hold'          # held until 110
    assert log.warnings == []
    d = eng.decide(obs(50.0, person=0.0, seq=7))                         # bag looped
    assert d.action == 'CONTINUE' and d.changed                         # hold forgotten
    assert len(log.warnings) == 1 and 'backwards' in log.warnings[0] and '101.000' in log.warnings[0]
    # Equal stamps are not "backwards" (a repeated frame).
    eng.decide(obs(50.0, person=0.0))
    assert len(log.warnings) == 1
    # Rule states restart, but `changed` still describes the published stream: same action, no change.
    d = eng.decide(obs(40.0, person=0.0))
    assert len(log.warnings) == 2 and d.action == 'CONTINUE' and not d.changed


def test_time_going_backwards_clears_cooldown():
    eng = engine([rule('STOP', 'STOP', 200, cooldown_s=100.0)])
    assert [eng.decide(obs(t, person=s)).action for t, s in [(10, 0.5), (11, 0.0), (12, 0.5)]] == \
        ['STOP', 'CONTINUE', 'CONTINUE']
    assert eng.decide(obs(5, person=0.5)).action == 'STOP'


def test_reset_forgets_previous_action():
    eng = engine([rule('STOP', 'STOP', 200)])
    assert eng.decide(obs(0)).changed
    assert not eng.decide(obs(1)).changed
    eng.reset()
    assert eng.decide(obs(2)).changed


HOVER = {'name': 'HOVER', 'code': 'HOVER', 'priority': 150, 'lookback_s': 2.0, 'below_similarity': 0.8,
         'exit_similarity': 0.85}


def test_temporal_rule_fires_on_low_similarity_with_hysteresis():
    eng = engine(temporal=[HOVER])
    sims = [None, 0.9, 0.75, 0.82, 0.875, 0.79, float('nan')]
    d = [eng.decide(obs(t, sim=s, lookback=2.0)) for t, s in enumerate(sims)]
    assert [x.action for x in d] == ['CONTINUE', 'CONTINUE', 'HOVER', 'HOVER', 'CONTINUE', 'HOVER', 'CONTINUE']
    assert math.isnan(d[0].scores['HOVER']) and d[1].scores['HOVER'] == pytest.approx(0.9)
    fired = d[2]
    assert (fired.trigger, fired.action_code, fired.priority) == ('memory', 2, 150)
    assert (fired.score, fired.threshold) == (pytest.approx(0.75), 0.8)
    assert fired.region == '' and fired.matched_prompt == ''
    assert fired.reason == 'HOVER: similarity to the scene 2 s ago 0.750 < 0.800'
    assert 'hysteresis' in d[3].reason and 'exit 0.850' in d[3].reason


def test_temporal_unknown_similarity_cannot_fire_but_hold_carries():
    eng = engine(temporal=[dict(HOVER, min_hold_s=1.0)])
    d = [eng.decide(obs(t, sim=s)) for t, s in [(0.0, None), (0.5, 0.5), (1.0, None), (1.5, None), (2.0, 0.5)]]
    assert [x.action for x in d] == ['CONTINUE', 'HOVER', 'HOVER', 'CONTINUE', 'HOVER']
    assert [x.trigger for x in d] == ['default', 'memory', 'hold', 'default', 'memory']
    assert 'unknown' in d[2].reason and math.isnan(d[2].score)


def test_temporal_rule_ignores_similarity_for_another_lookback():
    log = ListLogger()
    eng = engine(temporal=[HOVER], logger=log)
    assert eng.decide(obs(0, sim=0.5, lookback=10.0)).action == 'CONTINUE'
    assert eng.decide(obs(1, sim=0.5, lookback=10.0)).action == 'CONTINUE'
    assert len(log.warnings) == 1 and '10' in log.warnings[0]        # warned once, not every frame
    assert eng.decide(obs(2, sim=0.5, lookback=2.25)).action == 'HOVER'   # within tolerance


def test_temporal_and_prompt_rules_compete_by_priority():
    eng = engine([rule('SLOW', 'SLOW_DOWN', 100, prompts=['a car']), rule('STOP', 'STOP', 200)],
                 temporal=[HOVER])
    steps = [(0, 0.0, 0.5, 0.9), (1, 0.0, 0.5, 0.5), (2, 0.5, 0.5, 0.5), (3, 0.0, 0.0, 0.9)]
    d = [eng.decide(obs(t, person=p, car=c, sim=s)) for t, p, c, s in steps]
    assert [x.action for x in d] == ['SLOW', 'HOVER', 'STOP', 'CONTINUE']
    assert d[2].active == ('STOP', 'HOVER', 'SLOW')


def test_softmax_rule_with_contrast():
    eng = engine([rule('STOP', 'STOP', 200, score='softmax', temperature=0.5, enter=0.5)])
    d = eng.decide(obs(0, person=0.6, lawn=0.0))
    # Candidates: 'a person' (0.6), 'an empty lawn' (0.0): mass e^1.2 / (e^1.2 + e^0).
    expected = math.exp(1.2) / (math.exp(1.2) + 1.0)
    assert d.scores['STOP'] == pytest.approx(expected) and d.action == 'STOP'


def test_softmax_without_contrast_competes_with_the_other_rules_prompts():
    fake = FakeEmbed()
    eng = engine([rule('STOP', 'STOP', 200, contrast=None, score='softmax', temperature=0.5, enter=0.5),
                  rule('SLOW', 'SLOW_DOWN', 100, prompts=['a car'])], embed=fake)
    assert fake.calls == [['a person', 'a car', 'an empty lawn']]
    d = eng.decide(obs(0, person=0.6, car=0.8))
    # STOP's softmax runs over 'a person' (0.6), 'a car' (0.8), 'an empty lawn' (0.0) at T = 0.5.
    e_p, e_c, e_l = math.exp(1.2), math.exp(1.6), math.exp(0.0)
    assert d.scores['STOP'] == pytest.approx(e_p / (e_p + e_c + e_l))
    assert d.scores['SLOW'] == pytest.approx(0.8)
    assert d.action == 'SLOW'     # STOP's mass ~0.37 < 0.5; SLOW's margin 0.8 >= 0.25


def test_softmax_alone_without_contrast_is_a_policy_error():
    with pytest.raises(PolicyError, match=r'actions\[0\]\.contrast'):
        parse_policy({'version': 1, 'actions': [rule('STOP', 'STOP', 200, contrast=None, score='softmax',
                                                     temperature=0.1, enter=0.5)]})


def test_matched_prompt_is_the_best_positive_prompt():
    eng = engine([rule('STOP', 'STOP', 200, prompts=['a person', 'a car'])])
    d = eng.decide(obs(0, person=0.25, car=0.5))
    assert d.matched_prompt == 'a car' and d.score == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------------------
# laws

unit = st.floats(0.0, 0.7, allow_nan=False)


@settings(max_examples=100, deadline=None)
@given(scores=st.lists(unit, min_size=1, max_size=30), enter=st.sampled_from([0.1, 0.25, 0.5]))
def test_without_band_hold_or_cooldown_a_rule_is_memoryless(scores, enter):
    """exit == enter, min_hold 0, cooldown 0: active on a frame iff its score >= enter."""
    eng = engine([rule('STOP', 'STOP', 200, enter=enter)])
    previous = None
    for t, s in enumerate(scores):
        d = eng.decide(obs(float(t), person=s))
        assert (d.action == 'STOP') == (s >= enter)
        assert d.changed == (d.action != previous)
        previous = d.action


@settings(max_examples=100, deadline=None)
@given(steps=st.lists(st.tuples(unit, unit, st.floats(0.0, 2.0)), min_size=1, max_size=30))
def test_winner_has_the_highest_priority_among_active_rules(steps):
    eng = engine([rule('SLOW', 'SLOW_DOWN', 100, prompts=['a car'], exit=0.125, min_hold_s=0.5),
                  rule('STOP', 'STOP', 200, exit=0.125, cooldown_s=0.75)])
    prio = {'SLOW': 100, 'STOP': 200}
    t = 0.0
    for p, c, dt in steps:
        t += dt
        d = eng.decide(obs(t, person=p, car=c))
        if d.active:
            assert d.action == d.active[0] and d.priority == max(prio[n] for n in d.active)
        else:
            assert d.action == 'CONTINUE' and d.trigger == 'default'
