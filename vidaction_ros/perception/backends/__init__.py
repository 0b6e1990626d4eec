"""Embedding backends behind one interface, created by name and imported lazily.

Importing this package imports no model runtime: a CPU machine never imports TensorRT, pycuda or CUDA torch.

    cpu        offline default: ConSE bridge (EfficientNet-Lite0 scene + YOLOv3-tiny COCO objects -> MiniLM text space)
    clip_onnx  CLIP / SigLIP exported to ONNX (clip_export), onnxruntime on CPU or CUDA
    clip_hf    CLIP / SigLIP transformers directory, torch on the CPU (fp32)
    torch_cuda the same directory, torch on CUDA (fp16)
    tensorrt   ONNX export's image encoder as a cached TensorRT engine (fp16 / int8 / fp8)
    auto       the fastest of these the machine and model_path allow (resolve_auto)
"""
from __future__ import annotations

import importlib
import importlib.util

from .base import BackendUnavailable, EmbeddingBackend, FrameEmbedding, RegionVector

# name -> (module, class)
BACKENDS = {
    'cpu': ('.conse_cpu', 'ConseCpuBackend'),
    'clip_onnx': ('.clip_onnx', 'ClipOnnxBackend'),
    'clip_hf': ('.clip_torch', 'ClipTorchBackend'),
    'torch_cuda': ('.clip_torch', 'TorchCudaBackend'),
    'tensorrt': ('.tensorrt_backend', 'TensorRtBackend'),
}
CHOICES = ('auto', *BACKENDS)
# The cpu backend's object detectors (backend parameter, node parameter and launch argument `detector`).
DETECTOR_CHOICES = ('coco', 'hog', 'none')
# Which constructor arguments each backend takes, so a node can pass its whole parameter set.
BACKEND_ARGS = {
    'cpu': ('detector', 'detector_dir', 'threads', 'load_images', 'logger'),
    'clip_onnx': ('model_path', 'device', 'threads', 'load_images', 'logger'),
    'clip_hf': ('model_path', 'device', 'precision', 'threads', 'load_images', 'logger'),
    'torch_cuda': ('model_path', 'device', 'precision', 'threads', 'cuda_graph', 'load_images', 'logger'),
    'tensorrt': ('model_path', 'precision', 'max_batch', 'engine_cache_dir', 'calibration_source',
                 'calibration_frames', 'threads', 'load_images', 'logger'),
}


def machine_capabilities() -> dict:
    """What 'auto' may use here. Imports nothing heavy unless it is installed."""
    have_trt = importlib.util.find_spec('tensorrt') is not None
    have_cuda = False
    if importlib.util.find_spec('torch') is not None:
        import torch
        have_cuda = bool(torch.cuda.is_available())
    return {'tensorrt': have_trt, 'cuda': have_cuda}


def resolve_auto(model_path: str, model_format: str | None, tensorrt: bool, cuda: bool) -> str:
    """The backend 'auto' picks: no model -> cpu; an ONNX export -> tensorrt on a GPU with TensorRT, else
    clip_onnx; a transformers directory -> torch_cuda on a GPU, else clip_hf."""
    if not model_path:
        return 'cpu'
    if model_format == 'onnx':
        return 'tensorrt' if (tensorrt and cuda) else 'clip_onnx'
    if model_format == 'hf':
        return 'torch_cuda' if cuda else 'clip_hf'
    raise ValueError(f'model_path {model_path!r}: unknown model directory format {model_format!r}')


def create_backend(name: str, **params) -> EmbeddingBackend:
    """A backend by name with the parameters it takes (others are ignored, so nodes pass all of theirs;
    empty strings mean "the backend's default")."""
    if name == 'auto':
        model_path = params.get('model_path', '')
        fmt = None
        if model_path:
            from .joint import directory_format
            fmt = directory_format(model_path)
        name = resolve_auto(model_path, fmt, **machine_capabilities())
    if name not in BACKENDS:
        raise ValueError(f'unknown embedding backend {name!r}; choose one of {list(CHOICES)}')
    module_name, class_name = BACKENDS[name]
    module = importlib.import_module(module_name, __name__)
    kwargs = {k: v for k, v in params.items() if k in BACKEND_ARGS[name] and v != ''}
    return getattr(module, class_name)(**kwargs)


__all__ = ['BACKENDS', 'BackendUnavailable', 'CHOICES', 'DETECTOR_CHOICES', 'EmbeddingBackend', 'FrameEmbedding',
           'RegionVector', 'create_backend', 'resolve_auto']
