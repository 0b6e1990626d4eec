"""What every joint image-text backend (CLIP, SigLIP, MobileCLIP...) shares, whatever runs the model:
the model directory's description, image preprocessing, tokenisation and the embed_images/embed_texts
logic (full frame plus one crop per policy region, one batch, L2-normalised).

Subclasses (onnxruntime, torch, TensorRT) only run two encoders:
    _encode_images(pixel_values NCHW float32) -> (N, dim)
    _encode_texts(input_ids (N, L) int64, attention_mask (N, L) int64) -> (N, dim)

Two directory formats are understood (see docs/backends.md):
  * a Hugging Face transformers directory: config.json (model_type clip / siglip / ...), weights,
    preprocessor_config.json, tokenizer files;
  * a vidaction ONNX directory written by `python -m vidaction_ros.perception.backends.clip_export`:
    vidaction_model.json (the manifest below), image_encoder.onnx, text_encoder.onnx, tokenizer.json.
Both describe the same model with the same model_id, so an embedder on TensorRT and a policy node on
onnxruntime (prompts are embedded once, on the CPU) agree on the space they work in.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .base import BackendUnavailable, EmbeddingBackend, FrameEmbedding, RegionVector, check_bgr_frame, \
    l2_normalise_rows

MANIFEST = 'vidaction_model.json'
MANIFEST_FORMAT = 'vidaction-joint-onnx'
MANIFEST_VERSION = 1
IMAGE_ONNX = 'image_encoder.onnx'
TEXT_ONNX = 'text_encoder.onnx'
TOKENIZER_JSON = 'tokenizer.json'
RESIZE_MODES = ('shortest_crop', 'squash')
# OpenAI CLIP's normalisation: the default when a directory does not say.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ModelSpec:
    """Everything a runtime needs besides the weights. Stored as the ONNX directory's manifest."""
    model_id: str            # identity of the weights; equal for a HF dir and its ONNX export
    model_type: str          # 'clip', 'siglip', ... (informative)
    dim: int                 # joint embedding size
    image_size: int          # square model input, pixels
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str              # 'shortest_crop' (CLIP: shortest side, centre crop) or 'squash' (SigLIP)
    context_length: int      # token sequence length the text encoder takes (padded and truncated to it)
    pad_id: int

    def __post_init__(self):
        problems = []
        if self.dim < 1:
            problems.append(f'dim must be >= 1, got {self.dim}')
        if self.image_size < 8:
            problems.append(f'image_size must be >= 8, got {self.image_size}')
        if self.resize not in RESIZE_MODES:
            problems.append(f'resize must be one of {RESIZE_MODES}, got {self.resize!r}')
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            problems.append(f'mean and std need 3 values each, std > 0; got {self.mean} / {self.std}')
        if self.context_length < 2:
            problems.append(f'context_length must be >= 2, got {self.context_length}')
        if problems:
            raise ValueError('invalid model description: ' + '; '.join(problems))

    def to_manifest(self) -> dict:
        return {'format': MANIFEST_FORMAT, 'version': MANIFEST_VERSION, **asdict(self),
                'files': {'image_encoder': IMAGE_ONNX, 'text_encoder': TEXT_ONNX, 'tokenizer': TOKENIZER_JSON}}

    @classmethod
    def from_manifest(cls, data: dict, where: str) -> 'ModelSpec':
        if data.get('format') != MANIFEST_FORMAT:
            raise ValueError(f'{where}: format is {data.get("format")!r}, expected {MANIFEST_FORMAT!r}')
        if data.get('version') != MANIFEST_VERSION:
            raise ValueError(f'{where}: version {data.get("version")!r} not supported (this build reads '
                             f'{MANIFEST_VERSION})')
        fields = ('model_id', 'model_type', 'dim', 'image_size', 'mean', 'std', 'resize', 'context_length',
                  'pad_id')
        missing = [f for f in fields if f not in data]
        if missing:
            raise ValueError(f'{where}: missing field(s) {missing}')
        try:
            return cls(model_id=str(data['model_id']), model_type=str(data['model_type']), dim=int(data['dim']),
                       image_size=int(data['image_size']), mean=tuple(float(v) for v in data['mean']),
                       std=tuple(float(v) for v in data['std']), resize=str(data['resize']),
                       context_length=int(data['context_length']), pad_id=int(data['pad_id']))
        except (TypeError, ValueError) as err:
            raise ValueError(f'{where}: {err}') from None


def directory_format(path: str | Path) -> str:
    """'onnx' for a vidaction ONNX directory, 'hf' for a transformers directory; ValueError otherwise."""
    if not str(path):
        raise ValueError('model_path is empty: this backend loads a model from a directory; set model_path')
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f'model_path {str(path)!r} is not a directory')
    if (path / MANIFEST).is_file():
        return 'onnx'
    if (path / 'config.json').is_file():
        return 'hf'
    raise ValueError(f'model_path {str(path)!r} holds neither {MANIFEST} (an ONNX export made by '
                     f'vidaction_ros.perception.backends.clip_export) nor config.json (a transformers model directory)')


def read_manifest(path: str | Path) -> ModelSpec:
    where = str(Path(path) / MANIFEST)
    try:
        data = json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f'{where}: {err}') from None
    spec = ModelSpec.from_manifest(data, where)
    for name in (IMAGE_ONNX, TEXT_ONNX, TOKENIZER_JSON):
        if not (Path(path) / name).is_file():
            raise ValueError(f'{path}: {name} is missing (the manifest says the export has it)')
    return spec


def _weights_files(path: Path) -> list[Path]:
    files = sorted(path.glob('*.safetensors')) or sorted(path.glob('pytorch_model*.bin'))
    if not files:
        raise ValueError(f'{path}: no weights (*.safetensors or pytorch_model*.bin)')
    return files


def hf_model_id(path: str | Path, model_type: str) -> str:
    """Identity of a transformers directory's weights: the model type, the directory name and a digest of
    config.json plus each weights file's size and first MiB (hashing GBs at every start would cost
    seconds; a retrained model changes the config or the leading tensors)."""
    path = Path(path)
    digest = hashlib.sha256((path / 'config.json').read_bytes())
    for f in _weights_files(path):
        digest.update(f.name.encode())
        digest.update(str(f.stat().st_size).encode())
        with open(f, 'rb') as fh:
            digest.update(fh.read(1 << 20))
    return f'{model_type}:{path.resolve().name}:{digest.hexdigest()[:12]}'


def hf_spec(path: str | Path, pad_id: int) -> ModelSpec:
    """The ModelSpec of a transformers CLIP/SigLIP-style directory, from its config and preprocessor files."""
    path = Path(path)
    try:
        config = json.loads((path / 'config.json').read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f'{path / "config.json"}: {err}') from None
    model_type = str(config.get('model_type', ''))
    vision = config.get('vision_config') or {}
    text = config.get('text_config') or {}
    if not vision or not text:
        raise ValueError(f'{path}: config.json has no vision_config/text_config; not a joint image-text '
                         f'model (model_type {model_type!r})')
    try:
        pre = json.loads((path / 'preprocessor_config.json').read_text())
    except FileNotFoundError:
        pre = {}
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f'{path / "preprocessor_config.json"}: {err}') from None
    image_size = int(vision.get('image_size', 224))
    size = pre.get('crop_size') or pre.get('size') or {}
    if isinstance(size, dict):
        image_size = int(size.get('height') or size.get('shortest_edge') or image_size)
    elif isinstance(size, int):
        image_size = size
    # CLIP resizes the shortest side then centre-crops; SigLIP (no crop) resizes to the square directly.
    resize = 'shortest_crop' if pre.get('do_center_crop', model_type == 'clip') else 'squash'
    # CLIP projects both towers to projection_dim; SigLIP's image embedding is the vision tower's pooled
    # output (its text head projects to the same width).
    dim = int(config.get('projection_dim') or vision.get('hidden_size') or 0)
    return ModelSpec(model_id=hf_model_id(path, model_type), model_type=model_type, dim=dim,
                     image_size=image_size, mean=tuple(pre.get('image_mean', CLIP_MEAN)),
                     std=tuple(pre.get('image_std', CLIP_STD)), resize=resize,
                     context_length=int(text.get('max_position_embeddings', 77)), pad_id=pad_id)


# -- preprocessing -------------------------------------------------------------------------------------
def preprocess(crops: Sequence[np.ndarray], spec: ModelSpec, out: np.ndarray | None = None) -> np.ndarray:
    """bgr8 crops -> (N, 3, S, S) float32, normalised as the model was trained. cv2 on the CPU: at the
    working resolution (<= 640x480) a resize costs ~1 ms, less than shipping the frame to a GPU first."""
    import cv2
    size = spec.image_size
    batch = out if out is not None else np.empty((len(crops), 3, size, size), np.float32)
    mean = np.asarray(spec.mean, np.float32) * 255.0
    inv_std = 1.0 / (np.asarray(spec.std, np.float32) * 255.0)
    for i, crop in enumerate(crops):
        h, w = crop.shape[:2]
        if spec.resize == 'shortest_crop':
            scale = size / min(h, w)
            rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
            interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
            resized = cv2.resize(crop, (rw, rh), interpolation=interp)
            x0, y0 = (rw - size) // 2, (rh - size) // 2
            resized = resized[y0:y0 + size, x0:x0 + size]
        else:
            interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_CUBIC
            resized = cv2.resize(crop, (size, size), interpolation=interp)
        rgb = resized[:, :, ::-1].astype(np.float32)
        batch[i] = ((rgb - mean) * inv_std).transpose(2, 0, 1)
    return batch


class FileTokenizer:
    """A `tokenizers` tokenizer.json, padded and truncated to the model's context length. Used by every
    runtime, so the same text gives the same ids under onnxruntime, torch and TensorRT."""

    def __init__(self, path: str | Path, context_length: int, pad_id: int):
        from tokenizers import Tokenizer
        self.tokenizer = Tokenizer.from_file(str(path))
        self.context_length = context_length
        pad_token = self.tokenizer.id_to_token(pad_id)
        if pad_token is None:
            raise ValueError(f'{path}: pad id {pad_id} is not in the vocabulary')
        self.tokenizer.enable_truncation(context_length)
        self.tokenizer.enable_padding(length=context_length, pad_id=pad_id, pad_token=pad_token)

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], np.int64)
        mask = np.array([e.attention_mask for e in encodings], np.int64)
        return ids, mask


# -- the backend ---------------------------------------------------------------------------------------
class JointEmbeddingBackend(EmbeddingBackend):
    """embed_images / embed_texts for any image-text dual encoder; subclasses run the two encoders."""

    def __init__(self, model_path: str = '', load_images: bool = True, logger=None):
        self.model_path = str(model_path)
        self.load_images = load_images      # the policy node only embeds prompts
        self.log = logger or logging.getLogger(f'vidaction_ros.backends.{self.name}')
        self.spec: ModelSpec | None = None
        self.tokenizer = None

    def _set_spec(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.model_id = spec.model_id
        self.dim = spec.dim

    def _encode_images(self, pixel_values: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _encode_texts(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _checked(self, vectors, rows: int, what: str) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (rows, self.dim):
            raise RuntimeError(f'{self.name}: {what} encoder returned shape {vectors.shape}, expected '
                               f'({rows}, {self.dim}); the model does not match its description')
        if not np.isfinite(vectors).all():
            # fp16 overflow or a broken engine: never hand NaNs to the policy as if they were a scene.
            raise RuntimeError(f'{self.name}: {what} encoder returned non-finite values')
        return l2_normalise_rows(vectors)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if self.tokenizer is None:
            raise RuntimeError('backend not activated')
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        ids, mask = self.tokenizer(texts)
        return self._checked(self._encode_texts(ids, mask), len(texts), 'text')

    def embed_images(self, frames: Sequence[np.ndarray], regions: Sequence = ()) -> list[FrameEmbedding]:
        if self.spec is None or not self.load_images:
            raise RuntimeError('backend not activated for images')
        crops = []
        for frame in frames:
            check_bgr_frame(frame)
            h, w = frame.shape[:2]
            crops.append(frame)
            for region in regions:
                x0, y0, x1, y1 = region.pixel_bbox(w, h)
                crops.append(frame[y0:y1, x0:x1])
        if not crops:
            return []
        vectors = self._checked(self._encode_images(preprocess(crops, self.spec)), len(crops), 'image')
        return per_frame_embeddings(vectors, len(frames), regions)


def per_frame_embeddings(vectors: np.ndarray, frames: int, regions: Sequence) -> list[FrameEmbedding]:
    """Split one batch laid out frame by frame (full frame, then each region) into FrameEmbeddings."""
    per_frame = 1 + len(regions)
    results = []
    for f in range(frames):
        block = vectors[f * per_frame:(f + 1) * per_frame]
        results.append(FrameEmbedding(
            vector=block[0],
            regions={region.name: RegionVector(block[i + 1]) for i, region in enumerate(regions)}))
    return results


def require(module: str, backend: str, hint: str):
    """Import a runtime or raise BackendUnavailable saying what to install."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise BackendUnavailable(f'backend {backend!r} needs {module}: {err}. {hint}') from None
