"""A CLIP / SigLIP / MobileCLIP exported to ONNX, run by onnxruntime on the CPU or its CUDA provider.

The directory is written by `python -m vidaction_ros.perception.backends.clip_export HF_DIR OUT_DIR` (or by hand:
see joint.ModelSpec for the manifest). This is also how a robot runs a real model without torch or
transformers installed, and what the TensorRT backend builds its engines from.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import BackendUnavailable
from .joint import IMAGE_ONNX, TEXT_ONNX, TOKENIZER_JSON, FileTokenizer, JointEmbeddingBackend, \
    directory_format, read_manifest, require

DEVICES = ('cpu', 'cuda')


def onnx_session(path: Path, device: str, threads: int, backend: str):
    ort = require('onnxruntime', backend, 'pip install onnxruntime (or onnxruntime-gpu for device cuda)')
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if device == 'cuda':
        if 'CUDAExecutionProvider' not in ort.get_available_providers():
            raise BackendUnavailable(f'backend {backend!r} with device cuda needs onnxruntime-gpu; this '
                                     f'onnxruntime offers {ort.get_available_providers()}')
        providers = ['CUDAExecutionProvider', 'CPUExecutionProvider']
    else:
        providers = ['CPUExecutionProvider']
    return ort.InferenceSession(str(path), options, providers=providers)


def run_text_session(session, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    # Some exports drop attention_mask (SigLIP's text tower ignores it): feed what the graph declares.
    wanted = {i.name for i in session.get_inputs()}
    feeds = {'input_ids': input_ids, 'attention_mask': attention_mask}
    return session.run(None, {k: v for k, v in feeds.items() if k in wanted})[0]


class ClipOnnxBackend(JointEmbeddingBackend):
    name = 'clip_onnx'

    def __init__(self, model_path: str = '', device: str = 'cpu', threads: int = 1, load_images: bool = True,
                 logger=None):
        super().__init__(model_path, load_images, logger)
        if device not in DEVICES:
            raise ValueError(f'device must be one of {DEVICES}, got {device!r}')
        if threads < 1:
            raise ValueError(f'threads must be >= 1, got {threads}')
        self.device = device
        self.onnx_device = device     # where onnxruntime runs (TensorRT keeps its text side here)
        self.threads = threads
        self._image = None
        self._text = None

    def activate(self) -> None:
        try:
            fmt = directory_format(self.model_path)
        except ValueError as err:
            raise BackendUnavailable(str(err)) from None
        if fmt != 'onnx':
            raise BackendUnavailable(
                f'backend clip_onnx needs an ONNX export; {self.model_path} is a transformers directory: use '
                f'backend clip_hf / torch_cuda, or export it: python -m vidaction_ros.perception.backends.clip_export '
                f'{self.model_path} OUT_DIR')
        try:
            spec = read_manifest(self.model_path)
        except ValueError as err:
            raise BackendUnavailable(str(err)) from None
        self._set_spec(spec)
        root = Path(self.model_path)
        self.tokenizer = FileTokenizer(root / TOKENIZER_JSON, spec.context_length, spec.pad_id)
        self._text = onnx_session(root / TEXT_ONNX, self.onnx_device, self.threads, self.name)
        if self.load_images:
            self._image = onnx_session(root / IMAGE_ONNX, self.onnx_device, self.threads, self.name)
            self.embed_images([np.zeros((spec.image_size, spec.image_size, 3), np.uint8)])  # warm-up

    def deactivate(self) -> None:
        self._image = None
        self._text = None
        self.tokenizer = None

    def _encode_images(self, pixel_values: np.ndarray) -> np.ndarray:
        return self._image.run(None, {self._image.get_inputs()[0].name: pixel_values})[0]

    def _encode_texts(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return run_text_session(self._text, input_ids, attention_mask)
