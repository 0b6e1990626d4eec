"""The concept space of the offline default: class names as sentence embeddings, centred.

No CLIP-like joint image-text model ships its weights in a package reachable offline, so the default builds
the joint space itself (Norouzi et al., "Zero-shot learning by convex combination of semantic embeddings"):
an image is the confidence-weighted sum of the concepts seen in it, a prompt is its own sentence embedding,
both in the space of all-MiniLM-L6-v2 and centred on mu, the mean ImageNet class-name embedding. Centring
removes the direction every short English phrase shares, which otherwise dominates the cosine and makes every
frame look alike.

Two vocabularies: the 1000 ImageNet classes (scene context from the classifier: lawn, street sign, ...) and
the 80 COCO classes (objects from the detector: person, bicycle, car, bus, ...). A detected class becomes its
name embedded by the same text model ("a photo of a bicycle."), never a keyword match against the prompts.

Pure module (numpy; the text encoder is passed in).
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

CLASS_TEMPLATE = 'a photo of a {}.'
# The detector's "person" says more than a photo of one: people are what the prompts are mostly about, and
# this phrase sits between "a person standing" and "a pedestrian walking" in the text space.
CONCEPT_TEXT = {'person': 'a person, a pedestrian walking'}


class ConceptError(RuntimeError):
    """The class-name list is not what it should be; the message names the file."""


def imagenet_class_names() -> list[str]:
    path = Path(__file__).resolve().parent / 'data' / 'imagenet_classes.txt'
    names = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith('#')]
    if len(names) != 1000:
        raise ConceptError(f'{path} has {len(names)} class names, expected 1000')
    return names


def cache_dir() -> Path:
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return Path(base) / 'vidaction_ros'


def concept_text(label: str) -> str:
    """The sentence a detected class stands for in the text space."""
    return CONCEPT_TEXT.get(label, CLASS_TEMPLATE.format(label))


class ConceptSpace:
    """Centred concept vectors: the ImageNet classes (rows of `imagenet`) and detected classes (by label)."""

    def __init__(self, text, logger=None):
        self._text = text
        self.dim = text.dim
        self.log = logger or logging.getLogger('vidaction_ros.backends.cpu')
        self.imagenet_names = imagenet_class_names()
        vectors = self._imagenet_vectors()
        self.mu = vectors.mean(axis=0)
        self.imagenet = vectors - self.mu
        self._detected: dict[str, np.ndarray] = {}

    def prompts(self, texts: Sequence[str]) -> np.ndarray:
        """Prompt vectors: each text's sentence embedding, centred (rows not yet normalised)."""
        return self._text.encode(list(texts)) - self.mu

    def add_labels(self, labels: Sequence[str]) -> None:
        """Embed the detector's class names once, at activation (80 short sentences, well under a second)."""
        new = [label for label in dict.fromkeys(labels) if label not in self._detected]
        if new:
            for label, vector in zip(new, self._text.encode([concept_text(label) for label in new])):
                self._detected[label] = vector - self.mu

    def detected(self, label: str) -> np.ndarray:
        vector = self._detected.get(label)
        if vector is None:
            self.add_labels([label])
            vector = self._detected[label]
        return vector

    def _imagenet_vectors(self) -> np.ndarray:
        """Embeddings of the 1000 class names, cached on disk: ~1000 sentences cost seconds at every start."""
        names = [CLASS_TEMPLATE.format(n.split(',')[0].strip()) for n in self.imagenet_names]
        key = hashlib.sha256(('\n'.join(names) + self._text.model_id).encode()).hexdigest()[:16]
        path = cache_dir() / f'concepts-{key}.npy'
        try:
            vectors = np.load(path)
            if vectors.shape == (1000, self.dim) and np.isfinite(vectors).all():
                return vectors
        except (OSError, ValueError):
            pass
        vectors = self._text.encode(names)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f'.{os.getpid()}.tmp.npy')
            np.save(tmp, vectors)
            os.replace(tmp, path)  # atomic: a concurrent node never reads half a file
        except OSError as err:
            self.log.warning(f'could not cache concept vectors at {path}: {err}')
        return vectors
