"""vidaction_ros.tools.parity and bench/parity.py on the tiny random CLIP of tiny_models.

Expected values from first principles: the ONNX export runs the same fp32 weights as transformers, so its
vectors agree to rounding (cosine >= 0.999); a model with other random weights (seed 1) puts the same inputs
elsewhere, so the same check must fail; policy decisions are hand-computed on vectors built for them.
"""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

import tiny_models
from conftest import REPO, VIDEO

pytest.importorskip('torch')
pytest.importorskip('transformers')

from vidaction_ros.tools import parity  # noqa: E402
from vidaction_ros.perception.backends.clip_export import export  # noqa: E402
from vidaction_ros.paths import resolve_policy_file  # noqa: E402
from vidaction_ros.policy import load_policy, parse_policy  # noqa: E402

TEXTS = ['a person walking on the grass near the camera', 'the path ahead is clear', 'a car driving on the road']


@pytest.fixture(scope='module')
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp('parity')
    hf = tiny_models.build('clip', root / 'hf')
    other = tiny_models.build('clip', root / 'hf_seed1', seed=1)   # same architecture, other random weights
    siglip = tiny_models.build('siglip', root / 'siglip')          # another model: 32-d, not 16-d
    return {'hf': hf, 'onnx': export(hf, root / 'onnx'), 'other': other, 'siglip': siglip, 'root': root}


@pytest.fixture(scope='module')
def frames():
    return parity.video_frames(str(VIDEO), count=6)


@pytest.fixture(scope='module')
def policy():
    return load_policy(resolve_policy_file(''))


def reference(d):
    return parity.Candidate('clip_hf fp32', 'clip_hf', {'model_path': str(d['hf']), 'device': 'cpu'}, 'fp32')


@pytest.fixture(scope='module')
def report(dirs, frames, policy):
    cands = [parity.Candidate('clip_onnx fp32', 'clip_onnx', {'model_path': str(dirs['onnx'])}, 'fp32'),
             parity.Candidate('other weights', 'clip_hf', {'model_path': str(dirs['other'])}, 'fp16'),
             parity.Candidate('missing', 'clip_onnx', {'model_path': str(dirs['root'] / 'nope')}, 'fp32'),
             parity.Candidate('siglip', 'clip_hf', {'model_path': str(dirs['siglip'])}, 'int8')]
    return parity.run_parity(reference(dirs), cands, frames, TEXTS, policy)


def rows(report):
    return {r['label']: r for r in report['results']}


def test_onnx_export_matches_transformers_fp32(report, policy):
    r = rows(report)['clip_onnx fp32']
    assert r['passed'] is True and r['verdict'] == 'pass' and r['threshold'] == 0.999
    for key in ('image_cos', 'region_cos', 'text_cos'):
        assert r[key]['min'] >= 0.999, (key, r[key])
    assert r['cos_min'] >= 0.999 and r['same_model_id']
    assert r['top1_agreement'] == 1.0
    assert r['decisions_differing'] == 0 and r['score_max_abs_diff'] < 1e-3
    assert report['frames'] == 6 and report['regions'] == list(policy.regions)
    assert set(parity.policy_texts(policy)) <= set(report['texts']) and set(TEXTS) <= set(report['texts'])


def test_other_weights_fail_the_parity_check(report):
    r = rows(report)['other weights']
    assert r['passed'] is False and r['verdict'] == 'FAIL'
    assert r['cos_min'] < 0.99 and not r['same_model_id']
    assert report['passed'] is False                   # one failing gated row fails the run


def test_a_model_of_another_dimension_fails_even_where_nothing_is_gated(report):
    r = rows(report)['siglip']
    assert r['passed'] is False and r['verdict'] == 'FAIL' and 'shape' in r['error']


def test_a_backend_that_cannot_run_is_skipped_with_the_reason(report, dirs):
    r = rows(report)['missing']
    assert 'nope' in r['skipped'] and 'passed' not in r


def test_format_table(report):
    text = parity.format_table(report)
    assert 'missing' in text and 'skipped: ' in text
    assert 'FAIL' in text and 'overall: FAIL' in text and 'FAIL: shape mismatch' in text
    assert 'reference policy decisions: ' in text


def test_compare_gates_by_precision_and_reports_int8():
    rng = np.random.default_rng(0)
    ref_rows = rng.standard_normal((5, 8))
    ref_rows /= np.linalg.norm(ref_rows, axis=1, keepdims=True)
    ortho = rng.standard_normal((5, 8))
    ortho -= (ortho * ref_rows).sum(axis=1, keepdims=True) * ref_rows
    ortho /= np.linalg.norm(ortho, axis=1, keepdims=True)
    noisy = ref_rows + 0.05 * ortho                    # cosine 1 / sqrt(1 + 0.05^2) = 0.99875 on every row
    ref = parity.EmbeddingSet(frames=ref_rows.astype(np.float32), regions={}, texts=ref_rows[:3])
    got = parity.EmbeddingSet(frames=noisy.astype(np.float32), regions={}, texts=ref_rows[:3])
    np.testing.assert_allclose(parity.row_cosines(ref.frames, got.frames), 1 / np.sqrt(1.0025), atol=1e-6)
    assert parity.compare(ref, got, 'fp16')['passed'] is True
    assert parity.compare(ref, got, 'fp32')['passed'] is False
    int8 = parity.compare(ref, got, 'int8')
    assert int8['passed'] is None and int8['verdict'] == 'report' and 0 <= int8['top1_agreement'] <= 1
    with pytest.raises(ValueError, match='shape'):
        parity.row_cosines(ref.frames, got.frames[:, :4])


def test_policy_decisions_on_hand_made_vectors():
    spec = parse_policy({'version': 1, 'actions': [
        {'name': 'STOP', 'code': 'STOP', 'priority': 200, 'prompts': ['person'], 'contrast': ['lawn'],
         'enter': 0.3, 'exit': 0.2, 'min_clear_s': 0.0}]})     # released as soon as the margin drops
    texts = ['person', 'lawn']
    e = np.eye(3, dtype=np.float32)
    frames = np.stack([e[1], e[0], e[0], e[1], (e[0] + e[1]) / np.sqrt(2)])   # margins -1, 1, 1, -1, 0
    emb = parity.EmbeddingSet(frames=frames, regions={}, texts=e[:2])
    actions, scores = parity.policy_decisions(spec, texts, emb, np.arange(5) * 0.1)
    assert actions == ['CONTINUE', 'STOP', 'STOP', 'CONTINUE', 'CONTINUE']
    np.testing.assert_allclose(scores[:, 0], [-1, 1, 1, -1, 0], atol=1e-6)


@pytest.mark.slow
def test_int8_dynamic_quantisation_is_reported_with_agreement(dirs, frames):
    int8 = parity.quantize_int8(dirs['onnx'], dirs['root'] / 'int8')
    cands = [parity.Candidate('int8', 'clip_onnx', {'model_path': str(int8)}, 'int8')]
    report = parity.run_parity(reference(dirs), cands, frames, TEXTS)
    r = report['results'][0]
    assert r['verdict'] == 'report' and r['passed'] is None
    assert r['cos_min'] > 0.95                          # INT8 weights: close, not exact
    assert r['text_cos']['min'] > 0.999                 # the text encoder stays fp32
    assert report['passed'] is True                     # nothing gated failed
    with pytest.raises(parity.BackendUnavailable, match='not a vidaction ONNX export'):
        parity.quantize_int8(dirs['hf'], dirs['root'] / 'int8-bad')


@pytest.mark.slow
def test_cli_writes_json_and_exit_status(dirs, tmp_path):
    spec = importlib.util.spec_from_file_location('bench_parity', REPO / 'bench' / 'parity.py')
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    path = tmp_path / 'parity.json'
    assert cli.main(['--model-dir', str(dirs['hf']), '--frames', '4', '--work-dir', str(tmp_path / 'w'),
                     '--json', str(path)]) == 0
    report = json.loads(path.read_text())
    labels = {r['label']: r for r in report['results']}
    assert labels['clip_onnx fp32']['passed'] is True
    assert labels['clip_onnx int8 (dynamic)']['verdict'] == 'report'
    for r in report['results']:
        assert 'skipped' in r or 'cos_min' in r
        if 'skipped' in r:
            assert r['skipped'].strip()
