"""bench/embed.py: the JSON it writes, its skipped rows, its ratio column and its output checks, on the tiny
random CLIP of tiny_models (no GPU needed: GPU rows must come back skipped with a reason here, measured on a
CUDA machine)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

import tiny_models
from conftest import load_bench

torch = pytest.importorskip('torch')
pytest.importorskip('transformers')

from vidaction_ros.perception.backends.base import FrameEmbedding  # noqa: E402

ROW_KEYS = {'backend', 'model', 'precision', 'device', 'batch', 'n', 'p50_ms', 'p99_ms', 'mean_ms', 'max_ms',
            'per_frame_p50_ms', 'x_p50_vs_cpu', 'x_p99_vs_cpu'}


@pytest.fixture(scope='module')
def bench():
    return load_bench('embed')


@pytest.fixture(scope='module')
def hf_dir(tmp_path_factory):
    return tiny_models.build('clip', tmp_path_factory.mktemp('embed_bench') / 'hf')


@pytest.fixture(scope='module')
def run(bench, hf_dir, tmp_path_factory):
    """One quick run of every row group except the CPU towers (L/14 on 2 cores takes a minute)."""
    path = tmp_path_factory.mktemp('embed_json') / 'embed.json'
    argv = ['--iterations', '3', '--warmup', '1', '--batches', '1,2', '--model-dir', str(hf_dir),
            '--rows', 'cpu,clip_onnx,clip_hf,torch_cuda,tensorrt,tower_cuda', '--towers', 'b32',
            '--work-dir', str(path.parent / 'work'), '--json', str(path)]
    assert bench.main(argv) == 0
    return json.loads(path.read_text())


def test_json_schema_every_row(run):
    assert run['batches'] == [1, 2] and run['iterations'] == 3 and run['frame_size'] == [640, 480]
    rows = run['results']
    groups = {(r['backend'], r['device']) for r in rows}
    assert {('cpu', 'cpu'), ('cpu:hog', 'cpu'), ('clip_onnx', 'cpu'), ('clip_onnx', 'cuda'), ('clip_hf', 'cpu'),
            ('torch_cuda', 'cuda'), ('tensorrt', 'cuda')} <= groups
    for r in rows:
        assert ROW_KEYS <= set(r), r
        assert r['batch'] in (1, 2)
        if 'skipped' in r:
            assert isinstance(r['skipped'], str) and r['skipped'].strip(), r     # a reason, not a flag
            assert r['p50_ms'] is None and r['p99_ms'] is None and r['n'] == 0
        else:
            assert r['n'] >= 3
            assert 0 < r['p50_ms'] <= r['p99_ms'] <= r['max_ms'] + 1e-9
            assert math.isclose(r['per_frame_p50_ms'], r['p50_ms'] / r['batch'])
            assert r['dim'] > 0 and r['model_id']


def test_measured_rows_and_ratio_to_the_cpu_row_of_the_same_batch(run):
    rows = run['results']
    measured = {(r['backend'], r['device'], r['batch']): r for r in rows if 'skipped' not in r}
    for key in (('cpu', 'cpu', 1), ('cpu', 'cpu', 2), ('clip_onnx', 'cpu', 1), ('clip_hf', 'cpu', 2)):
        assert key in measured, f'{key} should run on any machine'
    for b in (1, 2):
        cpu = measured[('cpu', 'cpu', b)]
        assert cpu['x_p50_vs_cpu'] == pytest.approx(1.0)
        onnx = measured[('clip_onnx', 'cpu', b)]
        assert onnx['x_p50_vs_cpu'] == pytest.approx(cpu['p50_ms'] / onnx['p50_ms'])
        assert onnx['x_p99_vs_cpu'] == pytest.approx(cpu['p99_ms'] / onnx['p99_ms'])


def test_gpu_rows_are_skipped_with_the_reason_when_there_is_no_gpu(run):
    rows = run['results']
    if torch.cuda.is_available():
        pytest.skip('a CUDA GPU is present: the GPU rows are measured')
    cuda_rows = [r for r in rows if r['device'] == 'cuda']
    assert cuda_rows and all('skipped' in r for r in cuda_rows)
    assert all('CUDA' in r['skipped'] or 'cuda' in r['skipped'] or 'tensorrt' in r['skipped'] for r in cuda_rows)
    graph = [r for r in rows if r.get('cuda_graph')]     # listed (the CUDA-graph path), skipped for lack of CUDA
    assert graph and all(r['device'] == 'cuda' and 'skipped' in r for r in graph)


def test_table_prints_skipped_rows_with_their_reason(bench, run):
    text = bench.table(run['results'])
    for r in run['results']:
        if 'skipped' in r:
            assert f"skipped: {r['skipped']}" in text
    assert len(text.splitlines()) == len(run['results']) + 2


def test_add_ratios_only_against_a_measured_cpu_row_of_the_same_batch(bench):
    rows = [bench.base_row('cpu', 'm', 'fp32', 'cpu', 1), bench.base_row('clip_onnx', 'm', 'fp32', 'cpu', 1),
            bench.base_row('clip_onnx', 'm', 'fp32', 'cpu', 4), bench.base_row('tensorrt', 'm', 'fp16', 'cuda', 1)]
    rows[0].update(p50_ms=100.0, p99_ms=150.0)
    rows[1].update(p50_ms=10.0, p99_ms=50.0)
    rows[2].update(p50_ms=20.0, p99_ms=30.0)
    rows[3]['skipped'] = 'no tensorrt'
    bench.add_ratios(rows)
    assert (rows[1]['x_p50_vs_cpu'], rows[1]['x_p99_vs_cpu']) == (10.0, 3.0)
    assert rows[2]['x_p50_vs_cpu'] is None          # no cpu row at batch 4
    assert rows[3]['x_p50_vs_cpu'] is None


class _FakeBackend:
    name = 'fake'

    def __init__(self, scale):
        self.scale = scale

    def embed_images(self, frames, regions=()):
        return [FrameEmbedding(vector=np.full(4, 0.5 * self.scale, np.float32)) for _ in frames]


def test_time_calls_checks_the_output_is_unit_vectors(bench):
    frames = [np.zeros((480, 640, 3), np.uint8)] * 3
    out = bench.time_calls(_FakeBackend(1.0), frames, batch=2, iterations=5, warmup=1, budget_s=10.0)
    assert out['n'] == 5 and out['p50_ms'] <= out['p99_ms']
    with pytest.raises(RuntimeError, match='L2'):
        bench.time_calls(_FakeBackend(2.0), frames, batch=1, iterations=3, warmup=0, budget_s=10.0)


def test_budget_stops_a_row_but_never_below_the_minimum_samples(bench):
    frames = [np.zeros((480, 640, 3), np.uint8)]
    out = bench.time_calls(_FakeBackend(1.0), frames, batch=1, iterations=1000, warmup=0, budget_s=0.0)
    assert out['n'] == bench.MIN_SAMPLES


@pytest.mark.slow
def test_random_vit_b32_tower_runs_through_the_torch_backend_on_the_cpu(bench):
    frame = np.zeros((480, 640, 3), np.uint8)
    backend = bench.tower_backend('b32', 'cpu', 'fp32', threads=1)
    backend.activate()
    try:
        assert backend.dim == 512 and backend.spec.image_size == 224 and backend.name == 'clip_hf'
        n_params = sum(p.numel() for p in backend._model.vision_model.parameters())
        assert 85e6 < n_params < 90e6                     # ViT-B/32's image tower: ~88 M parameters
        out = bench.time_calls(backend, [frame], batch=1, iterations=3, warmup=0, budget_s=60.0)
        assert out['n'] == 3
    finally:
        backend.deactivate()
