"""Realistic embedding streams for the memory benchmarks and tests (no ROS imports).

Memory benchmarks must run on data shaped like video, never on uniform random vectors: on uniform
random 384-d data HNSW recall@10 is about 0.5 and inserts cost ~10x more, which says nothing about a
camera stream where consecutive frames are near-identical. Two sources:

* :func:`video_embeddings`: the CPU backend's frame vectors for every frame of a video (by default the
  bundled demo video), computed once and cached under ``~/.cache/vidaction_ros/`` (tens of seconds of
  CPU the first time; milliseconds afterwards);
* :func:`sphere_walk`: a random walk on the unit sphere whose mean consecutive cosine is chosen, used to
  extend the real stream to any length (:func:`extend_with_walk`) with the step measured on real frames.
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np

__all__ = [
    'DEMO_VIDEO',
    'step_sigma',
    'sphere_walk',
    'consecutive_cosine',
    'extend_with_walk',
    'video_embeddings',
    'embeddings_cache_path',
]

DEMO_VIDEO = '/usr/share/doc/opencv-doc/examples/data/vtest.avi'
# Bumped whenever the recipe below changes what a cached file would contain.
_RECIPE = 'v1'


def step_sigma(dim: int, cos: float) -> float:
    """Gaussian step size giving a mean consecutive cosine of about ``cos`` on the unit sphere.

    For a unit v and a step s*g (g standard normal in ``dim`` dimensions), |v + s g|^2 ~= 1 + s^2 dim and
    v.(v + s g) ~= 1, so cos ~= 1 / sqrt(1 + s^2 dim), i.e. s = sqrt((1/cos^2 - 1) / dim)."""
    if not 0.0 < cos < 1.0:
        raise ValueError(f'cos must be in (0, 1), got {cos!r}')
    if dim < 1:
        raise ValueError(f'dim must be >= 1, got {dim!r}')
    return math.sqrt((1.0 / cos**2 - 1.0) / dim)


def sphere_walk(rng: np.random.Generator, n: int, dim: int, cos: float = 0.98, start=None) -> np.ndarray:
    """``n`` float32 unit vectors: v <- normalise(v + sigma * gaussian), starting one step after ``start``
    (a random unit vector when None). Steps are drawn in chunks so a million-step walk needs no
    million-row temporary beyond its output."""
    sigma = step_sigma(dim, cos)
    v = rng.standard_normal(dim) if start is None else np.asarray(start, dtype=np.float64).copy()
    v /= np.linalg.norm(v)
    out = np.empty((n, dim), dtype=np.float32)
    chunk = 4096
    for c0 in range(0, n, chunk):
        steps = rng.standard_normal((min(chunk, n - c0), dim)) * sigma
        for j in range(steps.shape[0]):
            v = v + steps[j]
            v /= np.linalg.norm(v)
            out[c0 + j] = v
    return out


def consecutive_cosine(vectors: np.ndarray, statistic: str = 'median') -> float:
    """Median (or mean) cosine between consecutive rows (rows need not be normalised)."""
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] < 2:
        raise ValueError(f'need at least two row vectors, got shape {v.shape}')
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    cos = np.sum(v[1:] * v[:-1], axis=1)
    if statistic == 'median':
        return float(np.median(cos))
    if statistic == 'mean':
        return float(np.mean(cos))
    raise ValueError(f"statistic must be 'median' or 'mean', got {statistic!r}")


def extend_with_walk(real: np.ndarray, n: int, rng: np.random.Generator, max_cos: float = 0.999) -> np.ndarray:
    """The first ``n`` rows of: the real vectors, then a sphere walk from the last real vector whose step
    matches the real stream's median consecutive cosine (capped at ``max_cos``: a still camera gives ~1.0,
    which would make the walk a point).

    The median, not the mean: on the demo video's CPU embeddings the median is 0.993 but the mean 0.92,
    dragged down by the few frames where a person detection toggles (5th percentile 0.31), jumps a
    Gaussian walk does not reproduce anyway."""
    real = np.asarray(real, dtype=np.float32)
    if n <= real.shape[0]:
        return real[:n].copy()
    cos = min(max_cos, consecutive_cosine(real, 'median'))
    tail = sphere_walk(rng, n - real.shape[0], real.shape[1], cos=cos, start=real[-1])
    return np.concatenate([real, tail])


def embeddings_cache_path(video: str, max_width: int, max_height: int, model_id: str,
                          cache: str | os.PathLike | None = None) -> Path:
    """Where :func:`video_embeddings` keeps its result: keyed by the video (path, size, mtime), the working
    size and the backend's model id, so a changed input never returns stale vectors."""
    st = os.stat(video)
    key = hashlib.sha256(f'{_RECIPE}|{os.path.abspath(video)}|{st.st_size}|{int(st.st_mtime)}|'
                         f'{max_width}x{max_height}|{model_id}'.encode()).hexdigest()[:16]
    if cache is None:
        base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
        cache = Path(base) / 'vidaction_ros'
    return Path(cache) / f'frame-embeddings-{Path(video).stem}-{key}.npz'


def video_embeddings(video: str = DEMO_VIDEO, max_width: int = 640, max_height: int = 480,
                     cache: str | os.PathLike | None = None, threads: int = 1,
                     progress=None) -> tuple[np.ndarray, np.ndarray]:
    """(vectors float32 (n, dim), stamps_s float64 (n,)): the CPU backend's full-frame vector of every frame
    of ``video``, downscaled to the camera node's working size first, stamped with media time
    (index / fps). Cached; ``progress(done, total)`` is called while computing."""
    from ..perception.backends.conse_cpu import ConseCpuBackend

    if not os.path.isfile(video):
        raise FileNotFoundError(f'video not found: {video} (Debian: apt-get install opencv-doc)')
    backend = ConseCpuBackend(threads=threads)
    path = embeddings_cache_path(video, max_width, max_height, backend.model_id, cache)
    try:
        with np.load(path) as data:
            vectors, stamps = data['vectors'], data['stamps']
        if vectors.ndim == 2 and vectors.shape[0] == stamps.shape[0] > 0 and np.isfinite(vectors).all():
            return vectors, stamps
    except (OSError, ValueError, KeyError):
        pass

    from ..ingest.frame_source import OpenCvSource, downscale

    source = OpenCvSource(video)
    source.open()
    total = 0
    vectors_l, stamps_l = [], []
    try:
        import cv2
        total = int(source._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        with backend:
            while True:
                image, _index, media_s = source.read()
                if image is None:
                    break
                frame = downscale(image, max_width, max_height)
                vectors_l.append(backend.embed_images([frame])[0].vector.astype(np.float32))
                stamps_l.append(float(media_s))
                if progress is not None:
                    progress(len(vectors_l), total)
    finally:
        source.close()
    if not vectors_l:
        raise RuntimeError(f'no frames could be read from {video}')
    vectors = np.stack(vectors_l)
    stamps = np.asarray(stamps_l, dtype=np.float64)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + f'.{os.getpid()}.tmp.npz')
        np.savez(tmp, vectors=vectors, stamps=stamps)
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    except OSError:
        pass  # a read-only cache only costs recomputation next time
    return vectors, stamps


def rss_mb() -> float:
    """This process's resident set size in MB (the memory benches' RSS columns)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
