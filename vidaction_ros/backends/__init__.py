"""Embedding backends behind one interface, created by name and imported lazily.

Importing this package imports no model runtime: a CPU machine never imports TensorRT, pycuda or CUDA torch.
"""
from __future__ import annotations

import importlib

from .base import BackendUnavailable, EmbeddingBackend, FrameEmbedding, RegionVector

# name -> (module, class). 'cpu' is the offline default that runs everywhere.
BACKENDS = {
    'cpu': ('.conse_cpu', 'ConseCpuBackend'),
}


def create_backend(name: str, **params) -> EmbeddingBackend:
    if name not in BACKENDS:
        raise ValueError(f'unknown embedding backend {name!r}; choose one of {sorted(BACKENDS)}')
    module_name, class_name = BACKENDS[name]
    module = importlib.import_module(module_name, __name__)
    return getattr(module, class_name)(**params)


__all__ = ['BACKENDS', 'BackendUnavailable', 'EmbeddingBackend', 'FrameEmbedding', 'RegionVector',
           'create_backend']
