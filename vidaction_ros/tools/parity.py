"""Embedding parity across backends: do two runtimes of the same model put the same frames and prompts at
the same place in the joint space, and would the policy decide the same on them?

Pure core (numpy; backends created by name through `vidaction_ros.perception.backends.create_backend`): no ROS.
The CLI is bench/parity.py.

Every candidate embeds the same frames (full frame plus the policy's regions) and the same texts as the
reference (normally the model in fp32: clip_hf on a transformers directory), one candidate active at a
time. Per candidate:

  image / region / text cosine to the reference, min and mean (rows are unit vectors, so the cosine is
      the dot product). Gated per precision (THRESHOLDS): fp32 >= 0.999, fp16 / bf16 >= 0.99 on the
      minimum over every image, region and text vector. INT8 / FP8 are not gated on the cosine (their
      error depends on the calibration data, not on arithmetic alone): agreement is reported instead.
  top-1 agreement: the fraction of frames whose best-matching text (each backend with its own text
      vectors) is the reference's.
  policy decisions: a PolicyEngine per backend (its own prompt vectors), run over the frames in order
      with their video stamps; the number of frames whose action differs from the reference's.
      Memory (temporal) rules get the cosine to the frame `lookback_s` earlier from the same vectors.
"""
from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..perception.backends import BackendUnavailable, create_backend
from ..perception.backends.base import l2_normalise_rows

# Minimum cosine to the fp32 reference that passes, by precision; absent = reported, not gated.
THRESHOLDS = {'fp32': 0.999, 'fp16': 0.99, 'bf16': 0.99}
DEMO_VIDEO = '/usr/share/doc/opencv-doc/examples/data/vtest.avi'


@dataclass
class Candidate:
    """A backend to compare: created with create_backend(backend, **params) when its turn comes."""
    label: str
    backend: str
    params: dict = field(default_factory=dict)
    precision: str = 'fp32'
    note: str = ''


@dataclass
class EmbeddingSet:
    frames: np.ndarray                       # (N, D) full-frame vectors
    regions: dict[str, np.ndarray]           # region name -> (N, D)
    texts: np.ndarray                        # (T, D)
    model_id: str = ''
    device: str = ''
    seconds: float = 0.0


def policy_texts(spec) -> list[str]:
    """Every prompt the policy embeds (positive and contrast; rules without contrast compete with the other
    rules' prompts, which are in this list too), in first-seen order."""
    texts: list[str] = []
    for rule in spec.actions:
        for text in rule.prompts + rule.contrast:
            if text not in texts:
                texts.append(text)
    return texts


def video_frames(path: str = DEMO_VIDEO, count: int = 0, size: tuple[int, int] = (640, 480)
                 ) -> Callable[[], Iterable[tuple[float, np.ndarray]]]:
    """A function that yields (stamp_s, bgr8 frame resized to `size`) for `count` evenly spaced frames of
    the video (0 = every frame). A function, not a list: each backend streams the video again, so the
    whole video is never held in memory."""
    import cv2
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise FileNotFoundError(f'cannot open video {path} (Debian: apt-get install opencv-doc)')
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0) or 10.0
    capture.release()
    if count and total:
        wanted = set(np.linspace(0, total - 1, num=min(count, total)).round().astype(int).tolist())
    else:
        wanted = None

    def frames():
        cap = cv2.VideoCapture(path)
        index = 0
        try:
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                if wanted is None or index in wanted:
                    if (frame.shape[1], frame.shape[0]) != tuple(size):
                        frame = cv2.resize(frame, tuple(size), interpolation=cv2.INTER_AREA)
                    yield index / fps, frame
                index += 1
        finally:
            cap.release()
    return frames


def embed_set(backend, frames: Iterable[tuple[float, np.ndarray]], texts: Sequence[str], regions=()
              ) -> tuple[EmbeddingSet, np.ndarray]:
    """Embed every (stamp, frame) (full frame + regions, one call per frame, as the embedder node does) and
    the texts with an active backend. Returns the set and the stamps."""
    import time
    start = time.perf_counter()
    full, per_region, stamps = [], {r.name: [] for r in regions}, []
    for stamp, frame in frames:
        result = backend.embed_images([frame], list(regions))[0]
        full.append(result.vector)
        for r in regions:
            per_region[r.name].append(result.regions[r.name].vector)
        stamps.append(stamp)
    if not full:
        raise ValueError('no frames to embed')
    text_vectors = backend.embed_texts(list(texts))
    out = EmbeddingSet(frames=np.stack(full).astype(np.float32),
                       regions={k: np.stack(v).astype(np.float32) for k, v in per_region.items()},
                       texts=np.asarray(text_vectors, np.float32), model_id=backend.model_id,
                       device=str(getattr(backend, 'device', '')), seconds=time.perf_counter() - start)
    return out, np.asarray(stamps, np.float64)


def row_cosines(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Cosine of each row of `got` to the same row of `ref`. Backends return unit rows already; they are
    re-normalised so that the figure is a cosine whatever a backend's rounding of the norm."""
    if ref.shape != got.shape:
        raise ValueError(f'shape mismatch: reference {ref.shape}, candidate {got.shape} (a different model?)')
    return (l2_normalise_rows(ref) * l2_normalise_rows(got)).sum(axis=1)


def cosine_stats(cos: np.ndarray) -> dict:
    cos = np.asarray(cos, np.float64)
    if cos.size == 0:
        return {'min': None, 'mean': None}
    return {'min': float(cos.min()), 'mean': float(cos.mean())}


def top1_agreement(ref: EmbeddingSet, got: EmbeddingSet) -> float:
    """Fraction of frames whose best-matching text (each side with its own text vectors) is the same."""
    if ref.texts.shape[0] < 2:
        return float('nan')
    a = np.argmax(ref.frames @ ref.texts.T, axis=1)
    b = np.argmax(got.frames @ got.texts.T, axis=1)
    return float(np.mean(a == b))


def _text_lookup(texts: Sequence[str], vectors: np.ndarray):
    index = {t: i for i, t in enumerate(texts)}

    def embed_texts(wanted):
        missing = [t for t in wanted if t not in index]
        if missing:
            raise KeyError(f'prompts not embedded for the parity run: {missing[:3]}')
        return vectors[[index[t] for t in wanted]]
    return embed_texts


def policy_decisions(spec, texts: Sequence[str], emb: EmbeddingSet, stamps: np.ndarray
                     ) -> tuple[list[str], np.ndarray]:
    """The action the policy engine decides on each frame, in order, from these vectors alone, and every
    rule's score per frame ((N, rules) array, rules in spec.rules order; NaN = unknown)."""
    from ..policy import Observation, PolicyEngine
    engine = PolicyEngine(spec, _text_lookup(texts, emb.texts))
    lookback = spec.temporal[0].lookback_s if spec.temporal else None
    actions, scores = [], []
    for i, stamp in enumerate(stamps):
        similarity = None
        if lookback is not None:
            # The frame closest to `lookback` earlier, within half a lookback (as the memory matches it).
            target = stamp - lookback
            j = int(np.argmin(np.abs(stamps[:i + 1] - target)))
            if abs(stamps[j] - target) <= lookback / 2:
                similarity = float(np.clip(emb.frames[i] @ emb.frames[j], -1.0, 1.0))
        obs = Observation(stamp_s=float(stamp), sequence=i, vector=emb.frames[i],
                          regions={k: v[i] for k, v in emb.regions.items()}, similarity_to_past=similarity,
                          lookback_s=lookback)
        decision = engine.decide(obs)
        actions.append(decision.action)
        scores.append([decision.scores[r.name] for r in spec.rules])
    return actions, np.asarray(scores, np.float64).reshape(len(actions), len(spec.rules))


def compare(ref: EmbeddingSet, got: EmbeddingSet, precision: str) -> dict:
    """Cosine statistics, top-1 agreement and the verdict of one candidate against the reference."""
    image = row_cosines(ref.frames, got.frames)
    regions = [row_cosines(ref.regions[k], got.regions[k]) for k in ref.regions]
    region = np.concatenate(regions) if regions else np.zeros(0)
    text = row_cosines(ref.texts, got.texts)
    everything = np.concatenate([image, region, text])
    threshold = THRESHOLDS.get(precision)
    row = {'image_cos': cosine_stats(image), 'region_cos': cosine_stats(region), 'text_cos': cosine_stats(text),
           'cos_min': float(everything.min()), 'cos_mean': float(everything.mean()),
           'top1_agreement': top1_agreement(ref, got), 'threshold': threshold,
           'same_model_id': ref.model_id == got.model_id}
    if threshold is None:
        row['passed'], row['verdict'] = None, 'report'
    else:
        row['passed'] = bool(everything.min() >= threshold)
        row['verdict'] = 'pass' if row['passed'] else 'FAIL'
    return row


def run_parity(reference: Candidate, candidates: Sequence[Candidate], frames, texts: Sequence[str],
               policy=None, log: Callable[[str], None] | None = None) -> dict:
    """Embed with the reference, then with each candidate in turn, and compare.

    frames: a sequence of (stamp_s, bgr8 frame) or a function returning an iterable of them (read anew per
    backend). policy: a PolicySpec (its regions are embedded and its decisions compared) or None.
    Candidates that cannot run here (BackendUnavailable) are reported with "skipped": reason. A reference
    that cannot run raises BackendUnavailable."""
    log = log or (lambda msg: None)
    texts = list(dict.fromkeys(list(texts) + (policy_texts(policy) if policy is not None else [])))
    regions = list(policy.regions.values()) if policy is not None else []

    def run(c: Candidate):
        backend = create_backend(c.backend, **c.params)
        backend.activate()
        try:
            return embed_set(backend, frames() if callable(frames) else frames, texts, regions)
        finally:
            backend.deactivate()

    log(f'reference {reference.label} ...')
    ref, stamps = run(reference)
    ref_actions, ref_scores = policy_decisions(policy, texts, ref, stamps) if policy is not None else (None, None)
    report = {'reference': {'label': reference.label, 'backend': reference.backend,
                            'precision': reference.precision, 'model_id': ref.model_id, 'device': ref.device,
                            'seconds': ref.seconds, 'note': reference.note},
              'frames': int(ref.frames.shape[0]), 'regions': [r.name for r in regions], 'texts': texts,
              'dim': int(ref.frames.shape[1]), 'thresholds': dict(THRESHOLDS), 'results': []}
    if ref_actions is not None:
        counts = {a: ref_actions.count(a) for a in dict.fromkeys(ref_actions)}
        report['reference']['decisions'] = counts
        report['reference']['score_range'] = {
            r.name: [float(np.nanmin(ref_scores[:, k])), float(np.nanmax(ref_scores[:, k]))]
            for k, r in enumerate(policy.rules) if np.isfinite(ref_scores[:, k]).any()}
    for c in candidates:
        row = {'label': c.label, 'backend': c.backend, 'precision': c.precision, 'note': c.note}
        log(f'{c.label} ...')
        try:
            got, _ = run(c)
        except BackendUnavailable as err:
            row['skipped'] = str(err)
            report['results'].append(row)
            continue
        except RuntimeError as err:      # e.g. non-finite fp16 output, an engine that fails: a failed row
            row.update(passed=False, verdict='FAIL', error=f'{type(err).__name__}: {err}')
            report['results'].append(row)
            continue
        row.update({'model_id': got.model_id, 'device': got.device, 'seconds': got.seconds})
        try:
            row.update(compare(ref, got, c.precision))
        except ValueError as err:        # another dimension: not the same model at all
            row.update(passed=False, verdict='FAIL', error=str(err))
            report['results'].append(row)
            continue
        if ref_actions is not None:
            actions, scores = policy_decisions(policy, texts, got, stamps)
            diff = [i for i, (a, b) in enumerate(zip(ref_actions, actions)) if a != b]
            row['decisions_differing'] = len(diff)
            row['decisions_first_differing'] = diff[:10]
            delta = np.abs(scores - ref_scores)
            row['score_max_abs_diff'] = float(np.nanmax(delta)) if np.isfinite(delta).any() else None
        report['results'].append(row)
    gated = [r for r in report['results'] if r.get('passed') is not None]
    report['passed'] = all(r['passed'] for r in gated)
    return report


def quantize_int8(onnx_dir: str | Path, out_dir: str | Path) -> Path:
    """A copy of a vidaction ONNX directory whose image encoder is dynamically quantised to INT8 weights
    (onnxruntime.quantization.quantize_dynamic). The text encoder stays float, as on the TensorRT route
    (prompts are embedded once, on onnxruntime). Raises BackendUnavailable with the reason if it cannot."""
    from ..perception.backends.joint import IMAGE_ONNX, MANIFEST
    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as err:
        raise BackendUnavailable(f'onnxruntime.quantization unavailable: {err}') from None
    if not (onnx_dir / MANIFEST).is_file():
        raise BackendUnavailable(f'{onnx_dir} is not a vidaction ONNX export ({MANIFEST} missing)')
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in onnx_dir.iterdir():
        if item.name not in (IMAGE_ONNX, MANIFEST) and item.is_file():
            shutil.copy2(item, out_dir / item.name)
    try:
        quantize_dynamic(str(onnx_dir / IMAGE_ONNX), str(out_dir / IMAGE_ONNX), weight_type=QuantType.QInt8)
    except Exception as err:   # noqa: BLE001 - any failure of the quantiser is a reason to skip the row
        raise BackendUnavailable(f'quantize_dynamic failed on {onnx_dir / IMAGE_ONNX}: '
                                 f'{type(err).__name__}: {err}') from None
    shutil.copy2(onnx_dir / MANIFEST, out_dir / MANIFEST)   # last: a directory without it is no model
    return out_dir


def build_tiny_clip(builder_file: str | Path, out_dir: str | Path, seed: int = 0) -> Path:
    """The tiny random CLIP of the repository's test/tiny_models.py (`builder_file`), written to out_dir
    (reused when already there). Random weights: good for plumbing, parity and timing of the pipeline around
    the model, not for meaning."""
    import importlib.util
    out_dir = Path(out_dir)
    if (out_dir / 'config.json').is_file() and (out_dir / 'preprocessor_config.json').is_file():
        return out_dir
    spec = importlib.util.spec_from_file_location('vidaction_tiny_models', str(builder_file))
    if spec is None or not Path(builder_file).is_file():
        raise FileNotFoundError(f'{builder_file} not found (run from a source checkout, or pass --model-dir)')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build('clip', out_dir, seed=seed)


def prepare_dirs(model_dir: str | Path, work_dir: str | Path) -> dict:
    """{'hf': transformers dir or None, 'onnx': vidaction ONNX dir or None, 'onnx_reason': why there is no
    ONNX dir}. A transformers directory is exported (clip_export) into work_dir/onnx once."""
    from ..perception.backends.joint import MANIFEST, directory_format
    model_dir, work_dir = Path(model_dir), Path(work_dir)
    fmt = directory_format(model_dir)
    if fmt == 'onnx':
        return {'hf': None, 'onnx': model_dir, 'onnx_reason': ''}
    onnx_dir = work_dir / 'onnx'
    if (onnx_dir / MANIFEST).is_file():
        return {'hf': model_dir, 'onnx': onnx_dir, 'onnx_reason': ''}
    try:
        import warnings

        from ..perception.backends.clip_export import export
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')       # torch.onnx tracer warnings about constant shapes
            export(model_dir, onnx_dir)
        return {'hf': model_dir, 'onnx': onnx_dir, 'onnx_reason': ''}
    except Exception as err:   # noqa: BLE001 - no export means the ONNX rows are skipped, with this reason
        return {'hf': model_dir, 'onnx': None,
                'onnx_reason': f'ONNX export of {model_dir} failed: {type(err).__name__}: {err}'}


def _fmt(value, spec: str = '.4f') -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '-'
    return format(value, spec)


def format_table(report: dict) -> str:
    ref = report['reference']
    lines = [f"reference: {ref['label']} ({ref['backend']} {ref['precision']}, {ref['device']}, model "
             f"{ref['model_id']}); {report['frames']} frames x (full + {len(report['regions'])} region(s)), "
             f"{len(report['texts'])} texts, dim {report['dim']}"]
    if 'decisions' in ref:
        ranges = '; '.join(f'{k} {lo:.3f}..{hi:.3f}' for k, (lo, hi) in ref.get('score_range', {}).items())
        lines.append('reference policy decisions: ' + ', '.join(f'{k} {v}' for k, v in ref['decisions'].items())
                     + (f' (rule scores {ranges})' if ranges else ''))
    head = (f"{'candidate':<30}{'prec':<6}{'img min':>9}{'img mean':>9}{'reg min':>9}{'txt min':>9}"
            f"{'top1 agr':>9}{'dec diff':>9}{'score d':>9}{'gate':>7}  verdict")
    lines += [head, '-' * len(head)]
    for r in report['results']:
        if 'skipped' in r:
            lines.append(f"{r['label']:<30}{r['precision']:<6}skipped: {r['skipped']}")
            continue
        if 'error' in r:
            lines.append(f"{r['label']:<30}{r['precision']:<6}FAIL: {r['error']}")
            continue
        gate = _fmt(r['threshold'], '.3f')
        diff = r.get('decisions_differing')
        lines.append(f"{r['label']:<30}{r['precision']:<6}{_fmt(r['image_cos']['min']):>9}"
                     f"{_fmt(r['image_cos']['mean']):>9}{_fmt(r['region_cos']['min']):>9}"
                     f"{_fmt(r['text_cos']['min']):>9}{_fmt(r['top1_agreement'], '.3f'):>9}"
                     f"{'-' if diff is None else diff:>9}{_fmt(r.get('score_max_abs_diff')):>9}{gate:>7}"
                     f"  {r['verdict']}"
                     + ('' if r['same_model_id'] else '  (different model_id!)'))
    lines.append('cosines to the reference (min over frames / regions / texts); gate: the minimum over all of '
                 'them must reach it (fp32 0.999, fp16/bf16 0.99); int8/fp8 rows: agreement reported, not '
                 'gated;\ntop1 agr: frames whose best-matching text is the reference\'s; dec diff: frames whose '
                 'policy action differs from the reference\'s; score d: largest change of a rule score (e.g. '
                 'a margin) on any frame')
    lines.append(f"overall: {'PASS' if report['passed'] else 'FAIL'}")
    return '\n'.join(lines)


__all__ = ['Candidate', 'EmbeddingSet', 'THRESHOLDS', 'build_tiny_clip', 'compare', 'cosine_stats', 'embed_set',
           'format_table', 'policy_decisions', 'policy_texts', 'prepare_dirs', 'quantize_int8', 'row_cosines',
           'run_parity', 'top1_agreement', 'video_frames']
