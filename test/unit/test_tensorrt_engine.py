"""The TensorRT backend's decisions, tested without TensorRT or a GPU (neither exists on these machines):
which precision requests are valid on which GPU with which ONNX, the engine cache key, reading the ONNX's
quantisation, and the INT8 calibration frames. Building and running engines needs a GPU (bench/embed.py)."""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import read_frame
from vidaction_ros.perception.backends.joint import ModelSpec, preprocess
from vidaction_ros.perception.backends.tensorrt_engine import EngineKey, calibration_batches, check_precision, \
    onnx_quantization

ORIN = (8, 7)
HOPPER = (9, 0)


@pytest.mark.parametrize('precision, capability, quant, calib, expected', [
    ('fp16', ORIN, set(), '', 'float'),
    ('fp32', HOPPER, set(), '', 'float'),
    ('int8', ORIN, {'int8'}, '', 'explicit'),
    ('int8', ORIN, set(), '/data/robot.mp4', 'calibrate'),
    ('fp8', HOPPER, {'fp8'}, '', 'explicit'),
    ('fp8', (8, 9), {'fp8'}, '', 'explicit'),
])
def test_valid_precision_requests(precision, capability, quant, calib, expected):
    assert check_precision(precision, capability, quant, calib) == expected


@pytest.mark.parametrize('precision, capability, quant, calib, message', [
    ('fp8', ORIN, {'fp8'}, '', '8.7'),                 # Orin has no FP8 tensor cores
    ('fp8', HOPPER, set(), '', 'Q/DQ'),                 # no FP8 calibrator in TensorRT
    ('int8', ORIN, set(), '', 'calibration_source'),    # float ONNX and nothing to calibrate on
    ('fp16', ORIN, {'int8'}, '', 'quantised'),          # a quantised ONNX cannot become a float engine
    ('int4', ORIN, set(), '', 'precision'),
])
def test_invalid_precision_requests_say_why(precision, capability, quant, calib, message):
    with pytest.raises(ValueError, match=message):
        check_precision(precision, capability, quant, calib)


def test_engine_cache_key_changes_with_everything_that_makes_an_engine_invalid():
    key = EngineKey(onnx_sha256='ab' * 32, tensorrt_version='10.3.0', gpu_name='Orin', compute_capability=ORIN,
                    precision='fp16', max_batch=4, image_size=224, workspace_mib=1024)
    name = key.file_name('image_encoder')
    assert name == key.file_name('image_encoder')
    assert name.startswith('image_encoder-fp16-b4-sm87-trt10.3.0-') and name.endswith('.engine')
    changes = {'onnx_sha256': 'cd' * 32, 'tensorrt_version': '10.4.0', 'gpu_name': 'Thor',
               'compute_capability': (10, 1), 'precision': 'int8', 'max_batch': 2, 'image_size': 256,
               'workspace_mib': 2048}
    for field, value in changes.items():
        assert dataclasses.replace(key, **{field: value}).file_name('image_encoder') != name, field


def _qdq_model(path, zero_point):
    inputs = [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1, 4])]
    outputs = [helper.make_tensor_value_info('y', TensorProto.FLOAT, [1, 4])]
    inits = [helper.make_tensor('scale', TensorProto.FLOAT, [], [0.1])]
    q_inputs = ['x', 'scale']
    if zero_point is not None:
        inits.append(helper.make_tensor('zero', zero_point, [], [0]))
        q_inputs.append('zero')
    nodes = [helper.make_node('QuantizeLinear', q_inputs, ['q']),
             helper.make_node('DequantizeLinear', ['q'] + q_inputs[1:], ['y'])]
    graph = helper.make_graph(nodes, 'qdq', inputs, outputs, inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 19)]), str(path))
    return path


def test_onnx_quantization_reads_the_q_dq_types(tmp_path):
    assert onnx_quantization(_qdq_model(tmp_path / 'int8.onnx', TensorProto.INT8)) == {'int8'}
    assert onnx_quantization(_qdq_model(tmp_path / 'uint8.onnx', None)) == {'int8'}
    assert onnx_quantization(_qdq_model(tmp_path / 'fp8.onnx', TensorProto.FLOAT8E4M3FN)) == {'fp8'}


def test_float_model_has_no_quantization(tmp_path):
    graph = helper.make_graph([helper.make_node('Relu', ['x'], ['y'])], 'f',
                              [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info('y', TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph), str(tmp_path / 'f.onnx'))
    assert onnx_quantization(tmp_path / 'f.onnx') == set()


def test_calibration_batches_cover_the_whole_video_and_fill_the_last_batch(video_path):
    spec = ModelSpec(model_id='t', model_type='clip', dim=8, image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3,
                     resize='squash', context_length=8, pad_id=0)
    batches = list(calibration_batches(video_path, spec, frames=10, batch=4))
    assert [b.shape for b in batches] == [(4, 3, 32, 32)] * 3          # 10 frames -> 4 + 4 + 2 padded to 4
    # Frames evenly spaced over the 795-frame file: the first is frame 0, the tenth the last frame.
    first = preprocess([read_frame(0, size=None)], spec)[0]
    last = preprocess([read_frame(794, size=None)], spec)[0]
    np.testing.assert_allclose(batches[0][0], first, atol=1e-4)
    np.testing.assert_allclose(batches[2][1], last, atol=1e-4)
    np.testing.assert_array_equal(batches[2][2], batches[2][0])         # padding repeats the batch's frames


def test_calibration_source_that_cannot_open_is_named(tmp_path):
    spec = ModelSpec(model_id='t', model_type='clip', dim=8, image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3,
                     resize='squash', context_length=8, pad_id=0)
    with pytest.raises(ValueError, match='missing.mp4'):
        next(calibration_batches(str(tmp_path / 'missing.mp4'), spec, frames=4, batch=2))
