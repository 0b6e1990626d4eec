"""Backend 'tensorrt': the image encoder of a vidaction ONNX directory as a TensorRT engine (built once and
cached, see tensorrt_engine), the text encoder on onnxruntime (prompts are embedded once, at startup).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import BackendUnavailable
from .clip_onnx import ClipOnnxBackend
from .joint import IMAGE_ONNX, require
from .tensorrt_engine import PRECISIONS


class TensorRtBackend(ClipOnnxBackend):
    name = 'tensorrt'

    def __init__(self, model_path: str = '', precision: str = 'fp16', max_batch: int = 4,
                 engine_cache_dir: str = '', calibration_source: str = '', calibration_frames: int = 256,
                 workspace_mib: int = 1024, threads: int = 1, load_images: bool = True, logger=None):
        super().__init__(model_path, device='cpu', threads=threads, load_images=load_images, logger=logger)
        if precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
        if max_batch < 1:
            raise ValueError(f'max_batch must be >= 1 (1 + the number of regions), got {max_batch}')
        if calibration_frames < 1 or workspace_mib < 64:
            raise ValueError('calibration_frames must be >= 1 and workspace_mib >= 64')
        self.device = 'cuda'
        self.precision = precision
        self.max_batch = max_batch
        self.engine_cache_dir = engine_cache_dir
        self.calibration_source = calibration_source
        self.calibration_frames = calibration_frames
        self.workspace_mib = workspace_mib
        self._engine = None

    def activate(self) -> None:
        if self.load_images:
            # Fail fast and say which piece is missing before anything loads.
            require('tensorrt', self.name, 'install TensorRT (JetPack ships it on Jetson; pip install '
                    'tensorrt on a desktop GPU)')
            torch = require('torch', self.name, 'TensorRT buffers use torch CUDA tensors: install a CUDA '
                            'build of torch')
            if not torch.cuda.is_available():
                raise BackendUnavailable(f'backend tensorrt: torch {torch.__version__} sees no CUDA GPU')
        load_images, self.load_images = self.load_images, False
        try:
            super().activate()      # manifest, tokenizer, text encoder on onnxruntime
        finally:
            self.load_images = load_images
        if not self.load_images:
            return
        from ..concepts import cache_dir
        from .tensorrt_engine import TensorRtImageEngine
        engines = Path(self.engine_cache_dir) if self.engine_cache_dir else cache_dir() / 'tensorrt'
        try:
            self._engine = TensorRtImageEngine(
                Path(self.model_path) / IMAGE_ONNX, self.spec, self.precision, self.max_batch, engines,
                self.calibration_source, self.calibration_frames, self.workspace_mib, self.log)
        except ValueError as err:   # precision / GPU / ONNX mismatch: a configuration error, say it plainly
            raise BackendUnavailable(f'backend tensorrt: {err}') from None
        self.log.info(f'TensorRT engine {self._engine.engine_path}')
        self.embed_images([np.zeros((self.spec.image_size, self.spec.image_size, 3), np.uint8)])  # warm-up

    def deactivate(self) -> None:
        self._engine = None
        super().deactivate()

    def _encode_images(self, pixel_values):
        return self._engine.run(pixel_values)
