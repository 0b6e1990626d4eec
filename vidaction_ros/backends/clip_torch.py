"""A transformers CLIP / SigLIP directory run by torch: on the CPU (backend clip_hf, fp32) or on CUDA
(backend torch_cuda, fp16 by default).

Loads strictly from the local directory (local_files_only): a robot has no network, and a missing file
must fail at startup with its name, not hang on a download.
"""
from __future__ import annotations

import numpy as np

from .base import BackendUnavailable
from .joint import JointEmbeddingBackend, directory_format, hf_spec, require

PRECISIONS = ('fp32', 'fp16', 'bf16')


def features(output):
    """get_*_features returns a tensor in transformers 4 and a ModelOutput (pooler_output) in 5."""
    return output if hasattr(output, 'dtype') else output.pooler_output


class ClipTorchBackend(JointEmbeddingBackend):
    name = 'clip_hf'
    default_device = 'cpu'

    def __init__(self, model_path: str = '', device: str = '', precision: str = '', threads: int = 1,
                 load_images: bool = True, logger=None):
        super().__init__(model_path, load_images, logger)
        self.device = device or self.default_device
        if self.device not in ('cpu', 'cuda') and not self.device.startswith('cuda:'):
            raise ValueError(f'device must be cpu, cuda or cuda:N, got {self.device!r}')
        self.precision = precision or ('fp16' if self.device.startswith('cuda') else 'fp32')
        if self.precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS} for {self.name}, got {self.precision!r}')
        if self.device == 'cpu' and self.precision == 'fp16':
            raise ValueError('precision fp16 needs device cuda (CPU fp16 matmuls are slower than fp32)')
        if threads < 1:
            raise ValueError(f'threads must be >= 1, got {threads}')
        self.threads = threads
        self._torch = None
        self._model = None

    def activate(self) -> None:
        torch = require('torch', self.name, 'install torch (CPU build here, CUDA build on the robot)')
        transformers = require('transformers', self.name, 'pip install transformers')
        try:
            fmt = directory_format(self.model_path)
        except ValueError as err:
            raise BackendUnavailable(str(err)) from None
        if fmt != 'hf':
            raise BackendUnavailable(f'backend {self.name} needs a transformers directory (config.json); '
                                     f'{self.model_path} is an ONNX export: use backend clip_onnx or tensorrt')
        if self.device.startswith('cuda') and not torch.cuda.is_available():
            raise BackendUnavailable(f'backend {self.name}: device {self.device} but torch sees no CUDA GPU '
                                     f'(torch {torch.__version__})')
        if self.device == 'cpu':
            torch.set_num_threads(self.threads)
        self._torch = torch
        try:
            self.hf_tokenizer = transformers.AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
            model = transformers.AutoModel.from_pretrained(self.model_path, local_files_only=True)
        except (OSError, ValueError) as err:
            raise BackendUnavailable(f'cannot load {self.model_path}: {err}') from None
        pad_id = self.hf_tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.hf_tokenizer.eos_token_id
        try:
            spec = hf_spec(self.model_path, int(pad_id))
        except ValueError as err:
            raise BackendUnavailable(str(err)) from None
        self._set_spec(spec)
        dtype = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}[self.precision]
        self._dtype = dtype
        self._model = model.eval().to(device=self.device, dtype=dtype)
        self.tokenizer = self._tokenize
        if self.load_images:
            self.embed_images([np.zeros((spec.image_size, spec.image_size, 3), np.uint8)])  # warm-up

    def deactivate(self) -> None:
        self._model = None
        self.tokenizer = None
        if self._torch is not None and self.device.startswith('cuda'):
            self._torch.cuda.empty_cache()

    def _tokenize(self, texts):
        enc = self.hf_tokenizer(list(texts), padding='max_length', truncation=True,
                                max_length=self.spec.context_length, return_tensors='np')
        ids = enc['input_ids'].astype(np.int64)
        mask = enc.get('attention_mask')
        mask = np.ones_like(ids) if mask is None else mask.astype(np.int64)
        return ids, mask

    def _encode_images(self, pixel_values: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(pixel_values).to(self.device, non_blocking=True).to(self._dtype)
            return features(self._model.get_image_features(pixel_values=x)).float().cpu().numpy()

    def _encode_texts(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            ids = torch.from_numpy(input_ids).to(self.device)
            mask = torch.from_numpy(attention_mask).to(self.device)
            if self.spec.model_type.startswith('siglip'):
                # SigLIP was trained on max_length padding without a mask: pass none, as its processor does.
                out = self._model.get_text_features(input_ids=ids)
            else:
                out = self._model.get_text_features(input_ids=ids, attention_mask=mask)
            return features(out).float().cpu().numpy()


class TorchCudaBackend(ClipTorchBackend):
    """The same model on a CUDA GPU in fp16: the GPU path for a transformers directory."""
    name = 'torch_cuda'
    default_device = 'cuda'
