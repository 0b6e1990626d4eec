"""TensorRT engines for the image encoder of a vidaction ONNX directory (Jetson Orin, desktop GPUs).

Build once, cache, reuse: an engine is specific to the ONNX file, the TensorRT version, the GPU (compute
capability and name), the precision and the batch profile, so all of them go into the cache key and a
changed one builds a new engine instead of loading one that would fail or, worse, run wrongly.

Precisions
  fp32 / fp16  builder flags on the float ONNX.
  int8         either an ONNX with INT8 Q/DQ nodes (explicit quantisation, e.g. NVIDIA ModelOpt), or the
               float ONNX plus an entropy calibrator fed with frames from `calibration_source` (a video
               of the robot's own scenes; implicit quantisation, deprecated in TensorRT 10 but still
               the only route that needs no extra tool). The calibration cache is kept beside the engine.
  fp8          explicit quantisation only (TensorRT has no FP8 calibrator): an ONNX with FP8 Q/DQ nodes,
               and a GPU of compute capability >= 8.9 (Ada, Hopper, Thor). Jetson Orin (8.7) has no FP8
               tensor cores: asking for fp8 there fails at startup saying so.
Text prompts are embedded once at startup, so the text encoder stays on onnxruntime.

Only `import tensorrt` and torch's CUDA allocator are needed on the robot (no pycuda): device buffers are
torch tensors and the stream is torch's.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

PRECISIONS = ('fp32', 'fp16', 'int8', 'fp8')
FP8_MIN_CAPABILITY = (8, 9)


@dataclass(frozen=True)
class EngineKey:
    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    precision: str
    max_batch: int
    image_size: int
    workspace_mib: int

    def file_name(self, stem: str) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]
        sm = f'sm{self.compute_capability[0]}{self.compute_capability[1]}'
        return f'{stem}-{self.precision}-b{self.max_batch}-{sm}-trt{self.tensorrt_version}-{digest}.engine'


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def onnx_quantization(onnx_path: Path) -> set[str]:
    """Element types of the ONNX graph's QuantizeLinear outputs: {} for a float model, {'int8'} or
    {'fp8'} for an explicitly quantised one. Reads the graph only (no weights conversion)."""
    import onnx
    model = onnx.load(str(onnx_path), load_external_data=False)
    initialisers = {init.name: init for init in model.graph.initializer}
    kinds = set()
    for node in model.graph.node:
        if node.op_type != 'QuantizeLinear':
            continue
        # The zero point's type is the quantised type (INT8 / FLOAT8E4M3FN); without one it is uint8.
        zero = initialisers.get(node.input[2]) if len(node.input) > 2 else None
        if zero is None:
            kinds.add('int8')
        elif zero.data_type in (onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E5M2):
            kinds.add('fp8')
        else:
            kinds.add('int8')
    return kinds


def check_precision(precision: str, capability: tuple[int, int], quantization: set[str],
                    calibration_source: str) -> str:
    """How the engine will be quantised ('float', 'explicit' or 'calibrate'), or ValueError saying why the
    request cannot be met on this GPU with this ONNX. Pure, so every branch is tested without a GPU."""
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
    if precision in ('fp32', 'fp16'):
        if quantization:
            raise ValueError(f'the ONNX is quantised ({sorted(quantization)} Q/DQ nodes); use precision '
                             f'{sorted(quantization)[0]} with it, or export a float model for {precision}')
        return 'float'
    if precision == 'fp8':
        if tuple(capability) < FP8_MIN_CAPABILITY:
            raise ValueError(f'fp8 needs compute capability >= {FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]} '
                             f'(Ada, Hopper, Thor); this GPU is {capability[0]}.{capability[1]} (Jetson Orin '
                             f'is 8.7): use int8 or fp16')
        if 'fp8' not in quantization:
            raise ValueError('fp8 needs an ONNX with FP8 Q/DQ nodes (explicit quantisation, e.g. NVIDIA '
                             'ModelOpt); TensorRT has no FP8 calibrator')
        return 'explicit'
    # int8
    if 'int8' in quantization:
        return 'explicit'
    if not calibration_source:
        raise ValueError('int8 on a float ONNX needs calibration frames: set calibration_source to a video '
                         'of the robot\'s scenes, or give an ONNX with INT8 Q/DQ nodes')
    return 'calibrate'


def calibration_batches(source: str, spec, frames: int, batch: int) -> Iterator[np.ndarray]:
    """Preprocessed (batch, 3, S, S) float32 batches from evenly spaced frames of a video, for the INT8
    calibrator. Spaced over the whole file so the activation ranges cover all its scenes."""
    import cv2

    from .joint import preprocess
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        raise ValueError(f'calibration_source {source!r} cannot be opened')
    try:
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or frames
        wanted = set(np.linspace(0, max(total - 1, 0), num=min(frames, max(total, 1))).round().astype(int))
        chunk, index = [], 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if index in wanted:
                chunk.append(frame)
                if len(chunk) == batch:
                    yield preprocess(chunk, spec)
                    chunk = []
            index += 1
        if chunk:   # a short last batch is padded with its own frames: the calibrator wants full batches
            chunk += [chunk[i % len(chunk)] for i in range(batch - len(chunk))]
            yield preprocess(chunk, spec)
    finally:
        capture.release()


class TensorRtImageEngine:
    """Build-or-load and run one image-encoder engine. Needs tensorrt and torch with CUDA."""

    def __init__(self, onnx_path: Path, spec, precision: str, max_batch: int, cache_dir: Path,
                 calibration_source: str = '', calibration_frames: int = 256, workspace_mib: int = 1024,
                 logger=None):
        import tensorrt as trt
        import torch
        self.trt, self.torch = trt, torch
        self.log = logger
        self.spec = spec
        self.max_batch = max_batch
        capability = torch.cuda.get_device_capability()
        mode = check_precision(precision, capability, onnx_quantization(onnx_path), calibration_source)
        key = EngineKey(onnx_sha256=file_sha256(onnx_path), tensorrt_version=trt.__version__,
                        gpu_name=torch.cuda.get_device_name(), compute_capability=tuple(capability),
                        precision=precision, max_batch=max_batch, image_size=spec.image_size,
                        workspace_mib=workspace_mib)
        cache_dir.mkdir(parents=True, exist_ok=True)
        self.engine_path = cache_dir / key.file_name(onnx_path.stem)
        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        if not self.engine_path.is_file():
            self._build(onnx_path, precision, mode, cache_dir, calibration_source, calibration_frames,
                        workspace_mib)
        runtime = trt.Runtime(self._trt_logger)
        self.engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f'TensorRT could not deserialise {self.engine_path}; delete it to rebuild')
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise RuntimeError(f'{self.engine_path}: expected one input and one output, got {inputs} / {outputs}')
        self.input_name, self.output_name = inputs[0], outputs[0]
        size = spec.image_size
        # Fixed device buffers at the profile's maximum: no allocation on the hot path.
        self._input = torch.empty((max_batch, 3, size, size), dtype=torch.float32, device='cuda')
        self._output = torch.empty((max_batch, spec.dim), dtype=torch.float32, device='cuda')
        self._host_input = torch.empty_like(self._input, device='cpu').pin_memory()
        self._stream = torch.cuda.Stream()

    def _build(self, onnx_path, precision, mode, cache_dir, calibration_source, calibration_frames,
               workspace_mib):
        trt = self.trt
        flags = 0
        if mode == 'explicit' and precision == 'fp8':
            # FP8 Q/DQ graphs are built strongly typed: the ONNX's types decide each layer's precision.
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        builder = trt.Builder(self._trt_logger)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self._trt_logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f'TensorRT cannot parse {onnx_path}: {errors}')
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
        if precision in ('fp16', 'int8') and not flags:
            config.set_flag(trt.BuilderFlag.FP16)   # layers INT8 cannot take fall back to fp16, not fp32
        if precision == 'int8' and not flags:
            config.set_flag(trt.BuilderFlag.INT8)
        size = self.spec.image_size
        profile = builder.create_optimization_profile()
        name = network.get_input(0).name
        profile.set_shape(name, (1, 3, size, size), (self.max_batch, 3, size, size), (self.max_batch, 3, size, size))
        config.add_optimization_profile(profile)
        timing_path = cache_dir / f'timing-{trt.__version__}.cache'
        timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b'')
        config.set_timing_cache(timing, ignore_mismatch=False)
        if mode == 'calibrate':
            config.set_calibration_profile(profile)
            config.int8_calibrator = _make_calibrator(
                trt, self.torch, calibration_batches(calibration_source, self.spec, calibration_frames,
                                                     self.max_batch),
                self.max_batch, self.engine_path.with_suffix('.calib'))
        if self.log is not None:
            self.log.info(f'building TensorRT engine {self.engine_path.name} ({precision}, {mode}); minutes '
                          f'on a Jetson, once')
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f'TensorRT failed to build an engine from {onnx_path} ({precision})')
        tmp = self.engine_path.with_suffix(f'.{os.getpid()}.tmp')
        tmp.write_bytes(bytes(serialized))
        os.replace(tmp, self.engine_path)   # atomic: a second node never loads half an engine
        timing_path.write_bytes(bytes(config.get_timing_cache().serialize()))

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        n = pixel_values.shape[0]
        if n > self.max_batch:
            raise ValueError(f'batch {n} > engine max_batch {self.max_batch} (1 + number of regions)')
        torch = self.torch
        self._host_input[:n].copy_(torch.from_numpy(pixel_values))
        with torch.cuda.stream(self._stream):
            self._input[:n].copy_(self._host_input[:n], non_blocking=True)
            self.context.set_input_shape(self.input_name, tuple(self._input[:n].shape))
            self.context.set_tensor_address(self.input_name, self._input.data_ptr())
            self.context.set_tensor_address(self.output_name, self._output.data_ptr())
            if not self.context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError('TensorRT execute_async_v3 failed')
            result = self._output[:n].cpu()
        self._stream.synchronize()
        return result.numpy()


def _make_calibrator(trt, torch, batches, batch_size: int, cache_path: Path):
    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self._batches = iter(batches)
            self._device = None

        def get_batch_size(self):
            return batch_size

        def get_batch(self, names):
            try:
                batch = next(self._batches)
            except StopIteration:
                return None
            self._device = torch.from_numpy(batch).cuda()   # kept alive until the next call
            return [self._device.data_ptr()]

        def read_calibration_cache(self):
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache):
            cache_path.write_bytes(bytes(cache))

    return EntropyCalibrator()
