"""CLIP-style backends from a local path (clip_hf on torch, clip_onnx on onnxruntime, the ONNX export, 'auto'
selection, the TensorRT backend's checks) on tiny random CLIP and SigLIP models the tests build themselves.

Expected values come from transformers itself (the reference implementation of these architectures), from
first principles (a region's vector is its crop's vector; a constant image normalises to known numbers),
or from hand-built ONNX graphs — never from the backend under test.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import tiny_models
from conftest import read_frame

pytestmark = pytest.mark.slow

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from vidaction_ros.perception.backends import BackendUnavailable, CHOICES, create_backend, resolve_auto  # noqa: E402
from vidaction_ros.perception.backends.clip_export import export  # noqa: E402
from vidaction_ros.perception.backends.joint import MANIFEST, ModelSpec, preprocess, read_manifest  # noqa: E402
from vidaction_ros.perception.regions import Region  # noqa: E402

TEXTS = ['a person walking on the grass near the camera', 'the path ahead is clear', 'x',
         'an unusually long prompt that goes on ' * 12]


@pytest.fixture(scope='module', params=['clip', 'siglip'])
def model_dirs(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    hf = tiny_models.build(request.param, root / 'hf')
    onnx = export(hf, root / 'onnx')
    return request.param, hf, onnx


@pytest.fixture(scope='module')
def backends(model_dirs):
    kind, hf, onnx = model_dirs
    torch_backend = create_backend('clip_hf', model_path=str(hf))
    onnx_backend = create_backend('clip_onnx', model_path=str(onnx))
    torch_backend.activate()
    onnx_backend.activate()
    yield kind, torch_backend, onnx_backend
    torch_backend.deactivate()
    onnx_backend.deactivate()


def reference_texts(hf_dir, texts, length):
    """What transformers itself gives: tokenizer padded to the context length, get_text_features, L2."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(hf_dir, local_files_only=True).eval()
    enc = tokenizer(texts, padding='max_length', truncation=True, max_length=length, return_tensors='pt')
    with torch.no_grad():
        if model.config.model_type == 'siglip':
            out = model.get_text_features(input_ids=enc['input_ids'])
        else:
            out = model.get_text_features(input_ids=enc['input_ids'], attention_mask=enc['attention_mask'])
    out = out if isinstance(out, torch.Tensor) else out.pooler_output
    return torch.nn.functional.normalize(out, dim=-1).numpy(), enc['input_ids'].numpy()


def reference_image(hf_dir, pixel_values):
    model = transformers.AutoModel.from_pretrained(hf_dir, local_files_only=True).eval()
    with torch.no_grad():
        out = model.get_image_features(pixel_values=torch.from_numpy(pixel_values))
    out = out if isinstance(out, torch.Tensor) else out.pooler_output
    return torch.nn.functional.normalize(out, dim=-1).numpy()


# -- text ------------------------------------------------------------------------------------------
def test_text_vectors_match_transformers_and_are_unit_length(backends, model_dirs):
    kind, torch_backend, _ = backends
    expected, _ = reference_texts(model_dirs[1], TEXTS, tiny_models.CONTEXT)
    got = torch_backend.embed_texts(TEXTS)
    assert got.shape == expected.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_onnx_text_side_gives_the_same_ids_and_vectors_as_torch(backends, model_dirs):
    kind, torch_backend, onnx_backend = backends
    _, expected_ids = reference_texts(model_dirs[1], TEXTS, tiny_models.CONTEXT)
    ids, mask = onnx_backend.tokenizer(TEXTS)
    np.testing.assert_array_equal(ids, expected_ids)       # tokenizer.json == the transformers tokenizer
    assert ids.shape == (len(TEXTS), tiny_models.CONTEXT)  # padded and truncated to the context length
    cos = (torch_backend.embed_texts(TEXTS) * onnx_backend.embed_texts(TEXTS)).sum(axis=1)
    assert cos.min() > 0.9999, cos


def test_different_prompts_give_different_vectors(backends):
    _, torch_backend, _ = backends
    v = torch_backend.embed_texts(TEXTS[:2])
    assert float(v[0] @ v[1]) < 0.999
    assert torch_backend.embed_texts([]).shape == (0, torch_backend.dim)


# -- images ----------------------------------------------------------------------------------------
def test_image_vector_matches_transformers_on_a_real_frame(backends, model_dirs):
    kind, torch_backend, onnx_backend = backends
    frame = read_frame(400)
    expected = reference_image(model_dirs[1], preprocess([frame], torch_backend.spec))[0]
    got_torch = torch_backend.embed_images([frame])[0].vector
    got_onnx = onnx_backend.embed_images([frame])[0].vector
    np.testing.assert_allclose(got_torch, expected, atol=1e-5)
    assert float(got_onnx @ expected) > 0.9999
    assert abs(np.linalg.norm(got_onnx) - 1) < 1e-5


def test_region_vector_is_the_embedding_of_its_crop(backends):
    _, _, onnx_backend = backends
    frame = read_frame(600)
    near = Region('near_zone', ((0.0, 0.6), (1.0, 0.6), (1.0, 1.0), (0.0, 1.0)))
    left = Region('left', ((0.0, 0.0), (0.25, 0.0), (0.25, 0.5)))
    result = onnx_backend.embed_images([frame], [near, left])[0]
    assert set(result.regions) == {'near_zone', 'left'}
    for region in (near, left):
        x0, y0, x1, y1 = region.pixel_bbox(640, 480)
        crop_vector = onnx_backend.embed_images([np.ascontiguousarray(frame[y0:y1, x0:x1])])[0].vector
        np.testing.assert_allclose(result.regions[region.name].vector, crop_vector, atol=1e-5)
    assert float(result.regions['near_zone'].vector @ result.regions['left'].vector) < 0.9999


def test_batch_of_frames_equals_frames_one_by_one(backends):
    _, _, onnx_backend = backends
    frames = [read_frame(i) for i in (100, 500)]
    batch = onnx_backend.embed_images(frames)
    for frame, result in zip(frames, batch):
        np.testing.assert_allclose(result.vector, onnx_backend.embed_images([frame])[0].vector, atol=1e-5)
    assert float(batch[0].vector @ batch[1].vector) < 0.9999


@pytest.mark.parametrize('bad', [np.zeros((480, 640), np.uint8), np.zeros((480, 640, 3), np.float32),
                                 np.zeros((4, 4, 3), np.uint8), 'not an image'])
def test_bad_frames_are_rejected_with_a_reason(backends, bad):
    _, _, onnx_backend = backends
    with pytest.raises(ValueError, match='frame'):
        onnx_backend.embed_images([bad])


# -- preprocessing from first principles -------------------------------------------------------------
def spec(resize, size=32):
    return ModelSpec(model_id='t', model_type='clip', dim=4, image_size=size, mean=(0.5, 0.25, 0.125),
                     std=(0.5, 0.25, 0.5), resize=resize, context_length=8, pad_id=0)


def test_constant_image_normalises_to_the_known_values():
    frame = np.full((48, 80, 3), (255, 128, 0), np.uint8)        # B, G, R
    out = preprocess([frame], spec('squash'))
    r, g, b = 0 / 255, 128 / 255, 255 / 255                        # the model sees RGB
    expected = [(r - 0.5) / 0.5, (g - 0.25) / 0.25, (b - 0.125) / 0.5]
    assert out.shape == (1, 3, 32, 32)
    for channel, value in enumerate(expected):
        np.testing.assert_allclose(out[0, channel], value, atol=1e-5)


def test_shortest_side_crop_keeps_the_centre_and_squash_keeps_everything():
    # 64 wide x 32 high: left quarter red, right quarter green, middle half blue. The shortest side is
    # already 32, so the CLIP crop takes columns 16..48 — all blue — while squash keeps red and green.
    frame = np.zeros((32, 64, 3), np.uint8)
    frame[:, :16] = (0, 0, 255)
    frame[:, 16:48] = (255, 0, 0)
    frame[:, 48:] = (0, 255, 0)
    flat = spec('shortest_crop')
    crop = preprocess([frame], flat)[0]
    blue = (255 / 255 - flat.mean[2]) / flat.std[2]
    np.testing.assert_allclose(crop[2], blue, atol=1e-5)
    squashed = preprocess([frame], spec('squash'))[0]
    red = (1.0 - 0.5) / 0.5
    np.testing.assert_allclose(squashed[0, :, :6], red, atol=1e-4)   # left 8 columns red, bar the blend edge


# -- broken directories and configuration -----------------------------------------------------------
def test_empty_model_path_names_the_parameter():
    with pytest.raises(BackendUnavailable, match='model_path'):
        create_backend('clip_onnx', model_path='').activate()


def test_transformers_directory_given_to_clip_onnx_says_how_to_export(model_dirs):
    with pytest.raises(BackendUnavailable, match='clip_export'):
        create_backend('clip_onnx', model_path=str(model_dirs[1])).activate()


def test_onnx_export_given_to_clip_hf_says_which_backend_to_use(model_dirs):
    with pytest.raises(BackendUnavailable, match='clip_onnx'):
        create_backend('clip_hf', model_path=str(model_dirs[2])).activate()


@pytest.mark.parametrize('field', ['dim', 'context_length', 'resize'])
def test_manifest_with_a_missing_field_names_it(model_dirs, tmp_path, field):
    broken = tmp_path / 'onnx'
    shutil.copytree(model_dirs[2], broken)
    data = json.loads((broken / MANIFEST).read_text())
    del data[field]
    (broken / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(BackendUnavailable, match=field):
        create_backend('clip_onnx', model_path=str(broken)).activate()


def test_manifest_that_lies_about_the_dimension_fails_at_startup(model_dirs, tmp_path):
    broken = tmp_path / 'onnx'
    shutil.copytree(model_dirs[2], broken)
    data = json.loads((broken / MANIFEST).read_text())
    data['dim'] += 3
    (broken / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(RuntimeError, match='shape'):
        create_backend('clip_onnx', model_path=str(broken)).activate()   # the warm-up frame catches it


def test_missing_onnx_file_is_named(model_dirs, tmp_path):
    broken = tmp_path / 'onnx'
    shutil.copytree(model_dirs[2], broken)
    (broken / 'text_encoder.onnx').unlink()
    with pytest.raises(ValueError, match='text_encoder.onnx'):
        read_manifest(broken)


def test_export_and_transformers_directory_share_one_model_id(backends):
    _, torch_backend, onnx_backend = backends
    # The policy node may embed prompts on onnxruntime while the embedder runs TensorRT or torch CUDA:
    # Embedding.model must match across runtimes of the same weights.
    assert torch_backend.model_id == onnx_backend.model_id
    assert torch_backend.spec == onnx_backend.spec


def test_gpu_backends_say_what_is_missing_on_a_machine_without_them(model_dirs):
    if torch.cuda.is_available():
        pytest.skip('this machine has CUDA')
    with pytest.raises(BackendUnavailable, match='CUDA'):
        create_backend('torch_cuda', model_path=str(model_dirs[1])).activate()
    with pytest.raises(BackendUnavailable, match='tensorrt'):
        create_backend('tensorrt', model_path=str(model_dirs[2])).activate()


def test_tensorrt_backend_text_side_runs_without_a_gpu(backends, model_dirs):
    # The policy node only embeds prompts: on a TensorRT robot that runs on onnxruntime, no engine needed.
    _, torch_backend, _ = backends
    text_only = create_backend('tensorrt', model_path=str(model_dirs[2]), load_images=False)
    text_only.activate()
    cos = (text_only.embed_texts(TEXTS) * torch_backend.embed_texts(TEXTS)).sum(axis=1)
    assert cos.min() > 0.9999


# -- auto ------------------------------------------------------------------------------------------
@pytest.mark.parametrize('path, fmt, trt, cuda, expected', [
    ('', None, True, True, 'cpu'),
    ('m', 'onnx', True, True, 'tensorrt'),
    ('m', 'onnx', True, False, 'clip_onnx'),
    ('m', 'onnx', False, True, 'clip_onnx'),
    ('m', 'hf', False, True, 'torch_cuda'),
    ('m', 'hf', True, False, 'clip_hf'),
])
def test_auto_picks_the_fastest_backend_the_machine_allows(path, fmt, trt, cuda, expected):
    assert resolve_auto(path, fmt, tensorrt=trt, cuda=cuda) == expected
    assert expected in CHOICES


def test_auto_on_this_machine(model_dirs):
    kind, hf, onnx = model_dirs
    assert create_backend('auto').name == 'cpu'
    if not torch.cuda.is_available():
        assert create_backend('auto', model_path=str(onnx)).name == 'clip_onnx'
        assert create_backend('auto', model_path=str(hf)).name == 'clip_hf'


def test_unknown_backend_lists_the_choices():
    with pytest.raises(ValueError, match='clip_onnx'):
        create_backend('clip_tflite')
