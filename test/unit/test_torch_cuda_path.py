"""The torch_cuda image path (backends/clip_torch.py + backends/gpu_preprocess.py): uint8 frames uploaded once,
resize / crop / normalise in torch, one batch per call, CUDA graphs on a GPU.

Expected values come from the reference path, never from the code under test: joint.preprocess (cv2, what
clip_onnx and tensorrt use) for the pixels, the clip_hf backend on its cv2 path for the embeddings, and from
first principles (an area filter preserves a constant; a factor-2 area filter averages pixel pairs). Everything
but the CUDA-graph tests runs on the CPU; those skip without CUDA.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from conftest import read_frame
# Reused, not copied: the tiny CLIP / SigLIP directories, the clip_hf + clip_onnx backends on them, the
# preprocessing spec helper.
from test_joint_backends import backends, model_dirs, spec  # noqa: F401  (pytest fixtures)

pytestmark = pytest.mark.slow

torch = pytest.importorskip('torch')

from vidaction_ros.perception.backends import BackendUnavailable, gpu_preprocess  # noqa: E402
from vidaction_ros.perception.backends.clip_torch import ClipTorchBackend, TorchCudaBackend  # noqa: E402
from vidaction_ros.perception.backends.joint import preprocess  # noqa: E402
from vidaction_ros.perception.regions import Region  # noqa: E402

CUDA = torch.cuda.is_available()
cuda_only = pytest.mark.skipif(not CUDA, reason='needs a CUDA GPU (torch sees none on this machine)')
NEAR = Region('near_zone', ((0.0, 0.6), (1.0, 0.6), (1.0, 1.0), (0.0, 1.0)))
LEFT = Region('left', ((0.0, 0.0), (0.25, 0.0), (0.25, 0.5)))
TINY = Region('tiny', ((0.5, 0.5), (0.53, 0.5), (0.53, 0.54)))   # ~20x20 px of 640x480: upscaled


def cosine(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- preprocessing: torch vs joint.preprocess (cv2) on the CPU --------------------------------------------
# The crops the policy makes, as (rows, cols) of a 640x480 frame: the full frame, region views (strided), an
# upscaled one, a thin one, one at the model size and one a little larger.
CROPS = [(slice(None), slice(None)), (slice(288, 480), slice(0, 640)), (slice(0, 240), slice(0, 160)),
         (slice(231, 251), slice(310, 334)), (slice(100, 110), slice(20, 70)), (slice(0, 32), slice(0, 32)),
         (slice(5, 69), slice(7, 71))]


@pytest.mark.parametrize('resize', ['shortest_crop', 'squash'])
@pytest.mark.parametrize('size', [32, 224])
def test_torch_preprocess_matches_cv2_preprocess(resize, size):
    frame = read_frame(400)
    model = spec(resize, size)
    expected = preprocess([np.ascontiguousarray(frame[c]) for c in CROPS], model)
    as_tensor = torch.from_numpy(frame)
    got = gpu_preprocess.preprocess([as_tensor[c] for c in CROPS], model).numpy()
    assert got.shape == expected.shape == (len(CROPS), 3, size, size)
    diff = np.abs(got - expected)
    # Same filter and geometry: at most one grey level apart (cv2 rounds in fixed point), 1/255/0.25 ~ 0.016.
    assert diff.max() < 0.05, diff.max()
    assert diff.mean() < 1e-3, diff.mean()


def test_area_filter_from_first_principles():
    for n_in, n_out in [(640, 32), (480, 224), (33, 32), (1920, 398)]:
        w = gpu_preprocess.area_matrix(n_in, n_out)
        np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-9)       # a constant stays that constant
        assert (w >= 0).all()
    half = gpu_preprocess.area_matrix(8, 4)
    np.testing.assert_allclose(half, np.kron(np.eye(4), [[0.5, 0.5]]))  # factor 2: mean of each pair


def test_constant_frame_normalises_to_the_known_values_in_torch():
    frame = torch.tensor([255, 128, 0], dtype=torch.uint8).expand(48, 80, 3)   # B, G, R; a strided tensor
    model = spec('shortest_crop')
    out = gpu_preprocess.preprocess([frame], model)
    expected = [(0 - 0.5) / 0.5, (128 / 255 - 0.25) / 0.25, (1 - 0.125) / 0.5]  # the model sees RGB
    for channel, value in enumerate(expected):
        np.testing.assert_allclose(out[0, channel].numpy(), value, atol=1e-5)


def test_preprocess_writes_into_a_given_buffer_of_the_model_dtype():
    frame = torch.from_numpy(read_frame(100))
    model = spec('squash')
    reference = gpu_preprocess.preprocess([frame], model)
    buffer = torch.zeros((1, 3, 32, 32), dtype=torch.bfloat16)
    assert gpu_preprocess.preprocess([frame], model, out=buffer) is buffer
    np.testing.assert_allclose(buffer.float().numpy(), reference.numpy(), atol=0.02)
    with pytest.raises(ValueError, match='shape'):
        gpu_preprocess.preprocess([frame, frame], model, out=buffer)


# -- the backend on the CPU: the torch path gives clip_hf's embeddings -------------------------------------
@pytest.fixture(scope='module')
def torch_path(model_dirs):  # noqa: F811
    backend = TorchCudaBackend(model_path=str(model_dirs[1]), device='cpu', torch_preprocess=True)
    backend.activate()
    yield backend
    backend.deactivate()


def test_torch_path_gives_the_cv2_path_embeddings_with_regions(backends, torch_path):  # noqa: F811
    _, cv2_path, _ = backends
    assert not cv2_path.torch_preprocess and torch_path.torch_preprocess   # clip_hf on the CPU keeps cv2
    for index in (100, 400, 700):
        frame = read_frame(index)
        expected = cv2_path.embed_images([frame], [NEAR, LEFT, TINY])[0]
        got = torch_path.embed_images([frame], [NEAR, LEFT, TINY])[0]
        assert cosine(got.vector, expected.vector) > 0.999
        assert set(got.regions) == {'near_zone', 'left', 'tiny'}
        for name, region in expected.regions.items():
            assert cosine(got.regions[name].vector, region.vector) > 0.999, name
        assert abs(np.linalg.norm(got.vector) - 1) < 1e-5


def test_region_vector_is_the_embedding_of_its_crop_on_the_torch_path(torch_path):
    frame = read_frame(600)
    result = torch_path.embed_images([frame], [NEAR, TINY])[0]
    for region in (NEAR, TINY):
        x0, y0, x1, y1 = region.pixel_bbox(640, 480)
        crop_vector = torch_path.embed_images([np.ascontiguousarray(frame[y0:y1, x0:x1])])[0].vector
        np.testing.assert_allclose(result.regions[region.name].vector, crop_vector, atol=1e-5)


def test_frames_of_one_call_run_as_one_batch(torch_path, monkeypatch):
    frames = [read_frame(i) for i in (100, 500, 700)]
    one_by_one = [torch_path.embed_images([f], [LEFT])[0] for f in frames]
    batches = []
    forward = torch_path._forward

    def counting(pixels):
        batches.append(int(pixels.shape[0]))
        return forward(pixels)

    monkeypatch.setattr(torch_path, '_forward', counting)
    together = torch_path.embed_images(frames, [LEFT])
    assert batches == [6]                                      # 3 frames x (frame + 1 region), one forward
    for single, batched in zip(one_by_one, together):
        np.testing.assert_allclose(batched.vector, single.vector, atol=1e-5)
        np.testing.assert_allclose(batched.regions['left'].vector, single.regions['left'].vector, atol=1e-5)
    assert cosine(together[0].vector, together[1].vector) < 0.9999
    assert torch_path.embed_images([]) == []


def test_tensor_frames_are_accepted_on_both_cpu_paths(backends, torch_path):  # noqa: F811
    _, cv2_path, _ = backends
    frame = read_frame(300)
    as_tensor = torch.from_numpy(frame)
    for backend in (cv2_path, torch_path):
        expected = backend.embed_images([frame], [NEAR])[0]
        got = backend.embed_images([as_tensor], [NEAR])[0]
        np.testing.assert_allclose(got.vector, expected.vector, atol=1e-6)
        np.testing.assert_allclose(got.regions['near_zone'].vector, expected.regions['near_zone'].vector, atol=1e-6)
    # A strided tensor (a crop of a larger frame, as a camera driver may hand over) too.
    big = torch.from_numpy(read_frame(300, size=(800, 600)))
    view = big[50:530, 80:720]
    np.testing.assert_allclose(torch_path.embed_images([view])[0].vector,
                               torch_path.embed_images([view.contiguous().numpy()])[0].vector, atol=1e-6)


def test_read_only_and_strided_numpy_frames_work_without_warnings(torch_path):
    frame = read_frame(200)
    read_only = np.frombuffer(frame.tobytes(), np.uint8).reshape(frame.shape)   # as from a ROS message
    flipped = frame[:, ::-1]
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        a = torch_path.embed_images([read_only])[0].vector
        b = torch_path.embed_images([flipped])[0].vector
    np.testing.assert_allclose(a, torch_path.embed_images([frame])[0].vector, atol=1e-6)
    np.testing.assert_allclose(b, torch_path.embed_images([np.ascontiguousarray(flipped)])[0].vector, atol=1e-6)


@pytest.mark.parametrize('bad, reason', [
    (torch.zeros((480, 640, 3), dtype=torch.float32), 'uint8'),
    (torch.zeros((480, 640), dtype=torch.uint8), 'HxWx3'),
    (torch.zeros((480, 640, 4), dtype=torch.uint8), 'HxWx3'),
    (torch.zeros((3, 480, 640), dtype=torch.uint8), 'HxWx3'),
    (torch.zeros((4, 4, 3), dtype=torch.uint8), 'too small'),
    (np.zeros((480, 640, 3), np.float32), 'uint8'),
    ('not an image', 'frame must be'),
])
def test_bad_frames_are_rejected_with_a_reason(backends, torch_path, bad, reason):  # noqa: F811
    _, cv2_path, _ = backends
    for backend in (torch_path, cv2_path):
        with pytest.raises(ValueError, match=reason):
            backend.embed_images([read_frame(100), bad])


def test_cuda_graph_setting_is_inert_on_the_cpu(torch_path):
    assert torch_path.cuda_graph                       # the default
    for _ in range(3):
        torch_path.embed_images([read_frame(100)])
    assert torch_path._graphs == {}


def test_deactivated_backend_refuses_images(model_dirs):  # noqa: F811
    backend = TorchCudaBackend(model_path=str(model_dirs[1]), device='cpu', torch_preprocess=True)
    backend.activate()
    backend.deactivate()
    with pytest.raises(RuntimeError, match='not activated'):
        backend.embed_images([read_frame(100)])


def test_torch_cuda_without_cuda_says_so(model_dirs):  # noqa: F811
    if CUDA:
        pytest.skip('this machine has CUDA')
    backend = TorchCudaBackend(model_path=str(model_dirs[1]))
    assert backend.torch_preprocess and backend.cuda_graph and backend.precision == 'fp16'
    with pytest.raises(BackendUnavailable, match='CUDA'):
        backend.activate()


# -- CUDA only: graphs, device frames, fp16 / bf16 ---------------------------------------------------------
@pytest.fixture(scope='module')
def cuda_pair(model_dirs):  # noqa: F811
    graphed = TorchCudaBackend(model_path=str(model_dirs[1]))
    eager = TorchCudaBackend(model_path=str(model_dirs[1]), cuda_graph=False)
    graphed.activate()
    eager.activate()
    yield graphed, eager
    graphed.deactivate()
    eager.deactivate()


@cuda_only
def test_cuda_graph_replay_equals_eager_and_refreshes_its_input(cuda_pair):
    graphed, eager = cuda_pair
    assert 1 in graphed._graphs and not eager._graphs          # batch 1 captured at activation
    eager_runs = graphed._eager_runs.get(1, 0)
    a, b = read_frame(100), read_frame(500)
    ga, gb = graphed.embed_images([a])[0].vector, graphed.embed_images([b])[0].vector
    ea, eb = eager.embed_images([a])[0].vector, eager.embed_images([b])[0].vector
    assert graphed._eager_runs.get(1, 0) == eager_runs        # both calls replayed the graph
    np.testing.assert_allclose(ga, ea, atol=1e-2)              # fp16
    np.testing.assert_allclose(gb, eb, atol=1e-2)
    assert cosine(ga, ea) > 0.999 and cosine(gb, eb) > 0.999
    assert cosine(ga, gb) < 0.9999                             # the static input was refreshed
    np.testing.assert_allclose(graphed.embed_images([a])[0].vector, ga, atol=1e-6)   # replay is repeatable


@cuda_only
def test_frame_plus_regions_gets_its_graph_on_the_second_call(cuda_pair):
    graphed, eager = cuda_pair
    frame = read_frame(700)
    first = graphed.embed_images([frame], [NEAR, LEFT])[0]
    assert 3 not in graphed._graphs                            # first sight of batch 3: eager
    second = graphed.embed_images([frame], [NEAR, LEFT])[0]
    assert 3 in graphed._graphs
    reference = eager.embed_images([frame], [NEAR, LEFT])[0]
    for got in (first, second):
        assert cosine(got.vector, reference.vector) > 0.999
        for name in ('near_zone', 'left'):
            assert cosine(got.regions[name].vector, reference.regions[name].vector) > 0.999


def test_warm_up_runs_every_batch_a_live_frame_needs_and_changes_no_result(model_dirs):  # noqa: F811
    # On the CPU (no graphs): both batch sizes live frames need (1, 1 + regions) ran once before any frame;
    # a warmed backend then embeds exactly as one that was not warmed.
    warmed = TorchCudaBackend(model_path=str(model_dirs[1]), device='cpu', torch_preprocess=True)
    cold = TorchCudaBackend(model_path=str(model_dirs[1]), device='cpu', torch_preprocess=True)
    warmed.activate()
    cold.activate()
    try:
        before = dict(warmed._eager_runs)
        assert warmed.warm_up([NEAR, LEFT]) == [1, 3]
        assert warmed._eager_runs.get(3, 0) == before.get(3, 0) + 1
        assert warmed._eager_runs.get(1, 0) == before.get(1, 0) + 1
        assert warmed.warm_up([]) == [1]
        frame = read_frame(600)
        got, expected = (b.embed_images([frame], [NEAR, LEFT])[0] for b in (warmed, cold))
        np.testing.assert_allclose(got.vector, expected.vector, atol=1e-6)
        for name in ('near_zone', 'left'):
            np.testing.assert_allclose(got.regions[name].vector, expected.regions[name].vector, atol=1e-6)
    finally:
        warmed.deactivate()
        cold.deactivate()


@cuda_only
def test_warm_up_captures_every_live_batch_so_no_frame_waits_for_a_capture(model_dirs):  # noqa: F811
    backend = TorchCudaBackend(model_path=str(model_dirs[1]))
    backend.activate()
    try:
        assert backend.warm_up([NEAR, LEFT]) == [1, 3]
        assert {1, 3} <= set(backend._graphs)
        graphs, eager = dict(backend._graphs), dict(backend._eager_runs)
        backend.embed_images([read_frame(700)], [NEAR, LEFT])
        backend.embed_images([read_frame(701)])
        assert backend._graphs == graphs and backend._eager_runs == eager   # replayed: nothing captured or eager
    finally:
        backend.deactivate()


@cuda_only
def test_cuda_path_agrees_with_clip_hf_on_the_cpu(backends, cuda_pair):  # noqa: F811
    _, cv2_path, _ = backends
    graphed, _ = cuda_pair
    frame = read_frame(400)
    expected = cv2_path.embed_images([frame], [NEAR, TINY])[0]
    got = graphed.embed_images([frame], [NEAR, TINY])[0]
    assert cosine(got.vector, expected.vector) > 0.999
    for name in ('near_zone', 'tiny'):
        assert cosine(got.regions[name].vector, expected.regions[name].vector) > 0.999


@cuda_only
def test_a_frame_already_on_the_gpu_is_used_in_place(cuda_pair):
    graphed, _ = cuda_pair
    frame = read_frame(250)
    on_gpu = torch.from_numpy(frame).cuda()
    staging = [id(slot) for slot in graphed._staging]
    got = graphed.embed_images([on_gpu], [LEFT])[0]
    assert [id(slot) for slot in graphed._staging] == staging  # no host staging for a device tensor
    expected = graphed.embed_images([frame], [LEFT])[0]
    np.testing.assert_allclose(got.vector, expected.vector, atol=1e-6)
    np.testing.assert_allclose(got.regions['left'].vector, expected.regions['left'].vector, atol=1e-6)
    # and the uploaded frame equals the device frame, byte for byte
    with torch.inference_mode():
        assert torch.equal(graphed._upload(0, frame), on_gpu)


@cuda_only
def test_gpu_preprocess_on_cuda_matches_cv2(model_dirs):  # noqa: F811
    frame = read_frame(400)
    model = spec('shortest_crop', 224)
    expected = preprocess([np.ascontiguousarray(frame[c]) for c in CROPS], model)
    on_gpu = torch.from_numpy(frame).cuda()
    got = gpu_preprocess.preprocess([on_gpu[c] for c in CROPS], model).cpu().numpy()
    assert np.abs(got - expected).max() < 0.05


@cuda_only
def test_bf16_runs_from_a_graph(model_dirs):  # noqa: F811
    backend = TorchCudaBackend(model_path=str(model_dirs[1]), precision='bf16')
    backend.activate()
    try:
        assert 1 in backend._graphs
        v = backend.embed_images([read_frame(100)])[0].vector
        assert np.isfinite(v).all() and abs(np.linalg.norm(v) - 1) < 1e-5
    finally:
        backend.deactivate()
    assert backend._graphs == {}                               # released with the model


def test_clip_hf_defaults_are_unchanged():
    cpu = ClipTorchBackend(model_path='x')
    assert cpu.device == 'cpu' and cpu.precision == 'fp32' and not cpu.torch_preprocess
    gpu = TorchCudaBackend(model_path='x')
    assert gpu.device == 'cuda' and gpu.torch_preprocess and gpu.cuda_graph
    assert not TorchCudaBackend(model_path='x', cuda_graph=False).cuda_graph
