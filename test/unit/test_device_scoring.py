"""Prompt-rule scores on the embedding device (policy/score_table.py + perception/backends/device_scoring.py).

The reference is the policy engine's own scoring in numpy, float64 (policy/scoring.py: score_margin,
score_softmax), an independent code path: the device scores (torch, float32; here on the CPU, on a GPU in the
same tensors) must equal it within 1e-5 with the same best prompt, and the engine fed device scores must take
the same decisions as the engine scoring the vectors itself, on frames of the demo video through a real
(tiny, random-weight) CLIP model.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from conftest import read_frame
from test_joint_backends import model_dirs  # noqa: F401  (pytest fixture: tiny CLIP / SigLIP directories)

torch = pytest.importorskip('torch')

from vidaction_ros.perception.backends.clip_torch import ClipTorchBackend  # noqa: E402
from vidaction_ros.perception.backends.device_scoring import DeviceScorer  # noqa: E402
from vidaction_ros.policy import Observation, PolicyEngine  # noqa: E402
from vidaction_ros.policy.loader import parse_policy  # noqa: E402
from vidaction_ros.policy.score_table import build_score_table  # noqa: E402
from vidaction_ros.policy.scoring import score_margin, score_softmax  # noqa: E402

POLICY = {
    'version': 1,
    'default_action': {'name': 'CONTINUE', 'code': 'CONTINUE'},
    'regions': {'near_zone': {'polygon': [[0.0, 0.47], [1.0, 0.9], [1.0, 1.0], [0.0, 1.0]]},
                'left': {'polygon': [[0.0, 0.0], [0.4, 0.0], [0.4, 0.6], [0.0, 0.6]]}},
    'actions': [
        {'name': 'STOP', 'code': 'STOP', 'priority': 200, 'region': 'near_zone', 'score': 'margin',
         'prompts': ['a person on the grass', 'someone close to the camera', 'a pedestrian in the way'],
         'contrast': ['an empty lawn', 'green grass'], 'enter': 0.02, 'exit': 0.0},
        {'name': 'SLOW', 'code': 'SLOW_DOWN', 'priority': 100, 'score': 'softmax', 'temperature': 0.05,
         'prompts': ['a busy road with cars', 'traffic'], 'enter': 0.5, 'exit': 0.4},
        {'name': 'LOOK_LEFT', 'code': 'HOVER', 'priority': 50, 'region': 'left', 'score': 'softmax',
         'temperature': 0.1, 'prompts': ['a cyclist'], 'contrast': ['a wall', 'a tree', 'a parked car'],
         'enter': 0.4, 'exit': 0.3},
    ],
}
VIEWS = ('near_zone', 'left')


def text_vectors(texts, dim=32):
    """A deterministic vector per text (seeded by its hash): what a text encoder would give, for the unit test."""
    rows = [np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)).normal(size=dim)
            for t in texts]
    return np.array(rows)


def reference_scores(engine, views: dict) -> dict:
    out = {}
    for rule in engine.spec.actions:
        v = views[rule.region]
        if rule.score == 'margin':
            out[rule.name] = score_margin(v, engine._P[rule.name], engine._C[rule.name])
        else:
            out[rule.name] = score_softmax(v, engine._P[rule.name], engine._C[rule.name], rule.temperature)
    return out


def test_device_scores_equal_the_engines_numpy_scores_for_every_rule_kind_and_view():
    engine = PolicyEngine(parse_policy(POLICY), text_vectors)
    table = build_score_table(engine, VIEWS, 'test-model')
    scorer = DeviceScorer(table, torch, torch.device('cpu'))
    rng = np.random.default_rng(7)
    frames = 5
    raw = rng.normal(size=(frames * 3, 32)).astype(np.float32) * 3.0        # not unit length: normalised there
    packed = scorer(torch.from_numpy(raw)).numpy()
    vectors, scores = scorer.split(packed, frames, 32)
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    assert np.allclose(vectors, unit, atol=1e-6)
    for f, got in enumerate(scorer.as_dicts(scores)):
        views = {'': unit[3 * f].astype(np.float64), 'near_zone': unit[3 * f + 1].astype(np.float64),
                 'left': unit[3 * f + 2].astype(np.float64)}
        want = reference_scores(engine, views)
        assert got.keys() == want.keys()
        for name, (score, best) in want.items():
            assert got[name][0] == pytest.approx(score, abs=1e-5), (f, name)
            assert got[name][1] == best, (f, name)


def test_a_table_is_only_built_for_the_regions_the_rules_look_at_and_names_its_prompt_set():
    engine = PolicyEngine(parse_policy(POLICY), text_vectors)
    assert build_score_table(engine, ('near_zone',), 'm') is None          # LOOK_LEFT's region is not embedded
    table = build_score_table(engine, VIEWS, 'm')
    assert table.views == ('', 'near_zone', 'left') and list(table.view) == [1, 0, 2]
    assert table.digest == build_score_table(PolicyEngine(parse_policy(POLICY), text_vectors), VIEWS, 'm').digest
    assert table.digest != build_score_table(engine, VIEWS, 'another model').digest
    changed = {**POLICY, 'actions': [{**POLICY['actions'][0], 'prompts': ['a dog']}, *POLICY['actions'][1:]]}
    assert table.digest != build_score_table(PolicyEngine(parse_policy(changed), text_vectors), VIEWS, 'm').digest


def test_non_finite_or_out_of_range_device_scores_are_scored_again_by_the_engine():
    engine = PolicyEngine(parse_policy(POLICY), text_vectors)
    v = np.zeros(32)
    v[0] = 1.0
    views = {'near_zone': v, 'left': v}
    want = reference_scores(engine, {'': v, **views})
    bad = {'STOP': (float('nan'), 0), 'SLOW': (0.9, 7), 'LOOK_LEFT': (float('inf'), 0)}
    decision = engine.decide(Observation(stamp_s=1.0, sequence=0, vector=v, regions=views, device_scores=bad))
    assert dict(decision.scores) == pytest.approx({k: s for k, (s, _) in want.items()})


def between(sorted_scores, target: float) -> float:
    """The midpoint of the two adjacent scores nearest target that are more than 1e-4 apart."""
    pairs = [(lo, hi) for lo, hi in zip(sorted_scores, sorted_scores[1:]) if hi - lo > 1e-4]
    lo, hi = min(pairs, key=lambda pair: abs((pair[0] + pair[1]) / 2 - target))
    return (lo + hi) / 2


@pytest.fixture(scope='module')
def scored_backend(model_dirs):  # noqa: F811
    backend = ClipTorchBackend(model_path=str(model_dirs[1]), device='cpu', torch_preprocess=True)
    backend.activate()
    engine = PolicyEngine(parse_policy(POLICY), backend.embed_texts)
    backend.attach_score_table(build_score_table(engine, VIEWS, backend.model_id))
    yield backend, engine
    backend.deactivate()


def test_the_backend_scores_with_the_embedding_and_the_engine_decides_the_same_on_the_demo(scored_backend):
    backend, engine = scored_backend
    regions = [engine.spec.regions[name] for name in VIEWS]
    backend.warm_up(regions)
    frames = []
    for index in range(0, 600, 15):                               # 40 frames of the demo video, 1.5 s apart
        result = backend.embed_images([read_frame(index)], regions)[0]
        assert result.scores is not None and set(result.scores) == {'STOP', 'SLOW', 'LOOK_LEFT'}
        region_vectors = {name: rv.vector for name, rv in result.regions.items()}
        views = {'': result.vector.astype(np.float64), **{k: v.astype(np.float64) for k, v in region_vectors.items()}}
        want = reference_scores(engine, views)
        for name, (score, best) in want.items():
            assert result.scores[name][0] == pytest.approx(score, abs=1e-5) and result.scores[name][1] == best
        frames.append((index, result, region_vectors, want))
    # The random model's scores mean nothing, so each rule's enter threshold is about its median score on these
    # frames (exit a little lower): every rule fires and releases somewhere, hysteresis and priorities included.
    # Thresholds sit halfway between two frames' scores, never within float32 rounding of one.
    policy = {**POLICY, 'actions': []}
    for rule in POLICY['actions']:
        scores = sorted(want[rule['name']][0] for _, _, _, want in frames)
        enter = between(scores, scores[len(scores) // 2])
        exit_ = between(scores, enter - 0.1 * (scores[-1] - scores[0]))
        policy['actions'].append({**rule, 'enter': enter, 'exit': min(exit_, enter), 'min_clear_s': 0.0})
    spec = parse_policy(policy)
    with_device = PolicyEngine(spec, backend.embed_texts)
    on_host = PolicyEngine(spec, backend.embed_texts)
    assert build_score_table(with_device, VIEWS, backend.model_id).digest == backend.score_table.digest
    actions = set()
    for index, result, region_vectors, _ in frames:
        stamp = index / 10.0
        a = with_device.decide(Observation(stamp_s=stamp, sequence=index, vector=result.vector,
                                           regions=region_vectors, device_scores=result.scores))
        b = on_host.decide(Observation(stamp_s=stamp, sequence=index, vector=result.vector, regions=region_vectors))
        assert (a.action, a.trigger, a.matched_prompt, a.active) == (b.action, b.trigger, b.matched_prompt, b.active)
        assert dict(a.scores) == pytest.approx(dict(b.scores), abs=1e-5)
        actions.add(a.action)
    assert len(actions) >= 2, actions                             # the decisions compared were not all one
    assert backend.embed_images([read_frame(0)])[0].scores is None       # other regions: not scored


def test_detaching_the_table_stops_scoring(model_dirs):  # noqa: F811
    backend = ClipTorchBackend(model_path=str(model_dirs[1]), device='cpu', torch_preprocess=True)
    backend.activate()
    try:
        engine = PolicyEngine(parse_policy(POLICY), backend.embed_texts)
        regions = [engine.spec.regions[name] for name in VIEWS]
        backend.attach_score_table(build_score_table(engine, VIEWS, backend.model_id))
        assert backend.embed_images([read_frame(3)], regions)[0].scores is not None
        backend.attach_score_table(None)
        assert backend.embed_images([read_frame(3)], regions)[0].scores is None
    finally:
        backend.deactivate()


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU (torch sees none on this machine)')
def test_on_cuda_the_scores_come_from_the_captured_graph_and_match_the_engine(model_dirs):  # noqa: F811
    from vidaction_ros.perception.backends.clip_torch import TorchCudaBackend
    backend = TorchCudaBackend(model_path=str(model_dirs[1]), device='cuda', precision='fp32')
    backend.activate()
    try:
        engine = PolicyEngine(parse_policy(POLICY), backend.embed_texts)
        regions = [engine.spec.regions[name] for name in VIEWS]
        backend.attach_score_table(build_score_table(engine, VIEWS, backend.model_id))
        backend.warm_up(regions)
        assert f'{1 + len(VIEWS)}s' in backend._graphs                 # captured at warm-up, with the scores
        eager = dict(backend._eager_runs)
        for index in (0, 100, 200):
            result = backend.embed_images([read_frame(index)], regions)[0]
            views = {'': result.vector.astype(np.float64),
                     **{k: rv.vector.astype(np.float64) for k, rv in result.regions.items()}}
            for name, (score, best) in reference_scores(engine, views).items():
                assert result.scores[name][0] == pytest.approx(score, abs=1e-4) and result.scores[name][1] == best
        assert backend._eager_runs == eager                              # replayed, nothing run eagerly
    finally:
        backend.deactivate()
