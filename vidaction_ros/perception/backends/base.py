"""The embedding backend interface shared by every backend (CPU default, CLIP from a path, torch CUDA,
TensorRT): activate / embed_images / embed_texts / deactivate, in the spirit of Polygraphy's runners.

Backends are imported lazily (see `vidaction_ros.perception.backends.create_backend`) so a CPU machine never imports
TensorRT or pycuda.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


class BackendUnavailable(RuntimeError):
    """The backend cannot run on this machine (missing package, no GPU, missing model file)."""


@dataclass
class RegionVector:
    vector: np.ndarray
    detections: int = 0
    confidence: float = 0.0


@dataclass
class FrameEmbedding:
    vector: np.ndarray                                   # full frame, L2-normalised float32
    regions: dict[str, RegionVector] = field(default_factory=dict)
    top_concepts: list[str] = field(default_factory=list)
    detections: list = field(default_factory=list)       # perception.detections.Detection, regions assigned
    # The policy's prompt-rule scores computed with the vectors on the device (rule -> (score, best prompt));
    # None when the backend does not score (policy/score_table.py, backends/device_scoring.py).
    scores: dict | None = None


def check_bgr_frame(frame: np.ndarray) -> np.ndarray:
    """Reject frames the models cannot use, with a message that says what was wrong."""
    if not isinstance(frame, np.ndarray):
        raise ValueError(f'frame must be a numpy array, got {type(frame).__name__}')
    if frame.dtype != np.uint8:
        raise ValueError(f'frame must be uint8, got {frame.dtype}')
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f'frame must be HxWx3 (bgr8), got shape {frame.shape}')
    if frame.shape[0] < 8 or frame.shape[1] < 8:
        raise ValueError(f'frame too small: {frame.shape[1]}x{frame.shape[0]}')
    return frame


def l2_normalise_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.clip(norms, 1e-12, None)


class EmbeddingBackend(abc.ABC):
    """One model behind one interface. Vectors from embed_images and embed_texts share one space."""

    name: str = 'abstract'
    model_id: str = ''
    device: str = 'cpu'
    dim: int = 0
    # True when embed_images also takes HxWx3 uint8 torch tensors (a frame already on the GPU, from the cuda
    # transport, used in place); otherwise a caller hands such a frame over as a host numpy array.
    accepts_tensors: bool = False

    @abc.abstractmethod
    def activate(self) -> None:
        """Load weights and warm up. Raises BackendUnavailable with the reason when it cannot run."""

    @abc.abstractmethod
    def embed_images(self, frames: Sequence[np.ndarray], regions: Sequence = ()) -> list[FrameEmbedding]:
        """Embed bgr8 frames (HxWx3 uint8); one FrameEmbedding per frame with a vector per region."""

    @abc.abstractmethod
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed free-text prompts: (N, dim) float32, rows L2-normalised."""

    def warm_up(self, regions: Sequence = (), frame_shape: tuple[int, int] = (480, 640)) -> list[int]:
        """Run the image path once as live frames will (one frame with these regions: a batch of
        1 + len(regions)) so that nothing is compiled, autotuned or allocated for the first real frame; after
        activate, before frames flow (the embedder calls it in configure). Returns the batch sizes warmed."""
        frame = np.full((int(frame_shape[0]), int(frame_shape[1]), 3), 127, np.uint8)
        self.embed_images([frame], list(regions))
        return [1 + len(regions)]

    def deactivate(self) -> None:
        """Release models and device memory. Safe to call twice."""

    def __enter__(self):
        self.activate()
        return self

    def __exit__(self, *exc):
        self.deactivate()
