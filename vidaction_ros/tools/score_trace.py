"""Scoring a video or bag frame by frame exactly as the policy engine does, for vidaction-calibrate: the frames at
working resolution and media time, every rule's and every prompt's score from PolicyEngine (memory rules' from a
TemporalMemory), collected in a Trace and written as scores.csv.
"""
from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..policy import Observation, PolicyEngine, PolicySpec, PromptRule


# -- scoring frames exactly as the policy engine does ----------------------------------------------------------
def _cached(embed_texts: Callable) -> Callable:
    """embed_texts with a per-text cache: the per-prompt engines share one embedding of every text."""
    cache: dict[str, np.ndarray] = {}

    def embed(texts):
        missing = [t for t in texts if t not in cache]
        if missing:
            for text, row in zip(missing, np.asarray(embed_texts(missing))):
                cache[text] = row
        return np.stack([cache[t] for t in texts])
    return embed


def single_prompt_spec(spec: PolicySpec, rule: PromptRule, prompt: str) -> PolicySpec:
    """The policy with `rule` reduced to one positive prompt (other rules kept: a softmax rule without
    contrast competes with them). Memory rules are dropped: they do not change a prompt rule's score."""
    reduced = dataclasses.replace(rule, prompts=(prompt,))
    return dataclasses.replace(spec, actions=tuple(reduced if r is rule else r for r in spec.actions),
                               temporal=())


@dataclass
class FrameScores:
    stamp_s: float
    sequence: int
    action: str                                  # the decision of the policy as written
    rules: dict[str, float]                      # rule name -> score
    prompts: dict[str, dict[str, float]]         # prompt rule name -> prompt -> score


class ScoreTracer:
    """Feeds frame embeddings through a PolicyEngine (and one per prompt) and a TemporalMemory."""

    def __init__(self, spec: PolicySpec, embed_texts: Callable, logger=None, memory_capacity: int = 300,
                 memory_ttl_s: float = 30.0):
        embed = _cached(embed_texts)
        self.spec = spec
        self.engine = PolicyEngine(spec, embed, logger=logger)
        self.prompt_engines = {r.name: [(p, PolicyEngine(single_prompt_spec(spec, r, p), embed, logger=logger))
                                        for p in r.prompts] for r in spec.actions}
        lookbacks = self.engine.required_lookbacks
        if len(lookbacks) > 1:
            raise ValueError(f'memory rules with different lookback_s {lookbacks}: the memory node looks back '
                             f'one lookback_s, so only one of them can ever fire')
        self.lookback_s = lookbacks[0] if lookbacks else None
        self.memory_capacity, self.memory_ttl_s = memory_capacity, memory_ttl_s
        self.memory = None

    def observe(self, stamp_s: float, sequence: int, embedding) -> FrameScores:
        """embedding: a backends.FrameEmbedding (vector + regions)."""
        regions = {name: rv.vector for name, rv in embedding.regions.items()}
        similarity = None
        if self.lookback_s is not None:
            if self.memory is None:
                from ..memory import TemporalMemory
                self.memory = TemporalMemory(int(np.asarray(embedding.vector).size), capacity=self.memory_capacity,
                                             ttl_s=self.memory_ttl_s)
            # As the memory node: insert, then compare with the scene lookback_s before the newest frame.
            self.memory.insert(sequence, stamp_s, embedding.vector)
            past = self.memory.lookback(embedding.vector, self.lookback_s)
            similarity = float(past.similarity) if past is not None else None
        obs = Observation(stamp_s=stamp_s, sequence=sequence, vector=embedding.vector, regions=regions,
                          similarity_to_past=similarity, lookback_s=self.lookback_s)
        decision = self.engine.decide(obs)
        prompts = {name: {p: float(e.decide(obs).scores[name]) for p, e in engines}
                   for name, engines in self.prompt_engines.items()}
        return FrameScores(stamp_s, sequence, decision.action, {k: float(v) for k, v in decision.scores.items()},
                           prompts)


# -- frames ----------------------------------------------------------------------------------------------------
def iter_frames(source: str, step: int = 1, rate_hz: float | None = None, start_s: float | None = None,
                end_s: float | None = None, max_width: int = 640, max_height: int = 480,
                bag_topic: str | None = None) -> Iterator[tuple[int, float, np.ndarray]]:
    """(index, media time s, bgr8 frame at working resolution) of a video file or a rosbag2 bag.

    Kept: media time in [start_s, end_s), then every `step`-th frame, then at most `rate_hz` per second of
    media time (the camera's RateLimiter)."""
    from ..ingest.bags import BagFrameSource, is_bag_path
    from ..ingest.frame_source import OpenCvSource, downscale
    from ..ingest.rate import RateLimiter
    if step < 1:
        raise ValueError(f'step must be >= 1, got {step}')
    limiter = RateLimiter(rate_hz) if rate_hz else None
    src = BagFrameSource(source, bag_topic) if is_bag_path(source) else OpenCvSource(source)
    src.open()
    try:
        in_range = 0
        while True:
            image, index, media = src.read()
            if image is None:
                return
            if media is None:
                media = index / src.fps
            if start_s is not None and media < start_s - 1e-9:
                continue
            if end_s is not None and media >= end_s - 1e-9:
                return
            in_range += 1
            if (in_range - 1) % step:
                continue
            if limiter is not None and not limiter.ready(media):
                continue
            yield index, float(media), downscale(image, max_width, max_height)
    finally:
        src.close()


def frame_count(source: str, bag_topic: str | None = None) -> int | None:
    """Frames in the source (for the progress bar), or None when unknown."""
    from ..ingest.bags import IMAGE_TYPES, bag_info, is_bag_path
    try:
        if is_bag_path(source):
            topics = [t for t in bag_info(source).topics if t.msgtype in IMAGE_TYPES]
            return sum(t.count for t in topics if not bag_topic or t.name.lstrip('/') == bag_topic.lstrip('/'))
        import cv2
        cap = cv2.VideoCapture(source)
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        cap.release()
        return n or None
    except Exception:   # only for the progress bar: never fail a run over it
        return None


@dataclass
class Trace:
    source: str
    spec: PolicySpec
    model: str
    frames: list[FrameScores]

    @property
    def times(self) -> np.ndarray:
        return np.array([f.stamp_s for f in self.frames], dtype=np.float64)

    def rule_scores(self, name: str) -> np.ndarray:
        return np.array([f.rules[name] for f in self.frames], dtype=np.float64)

    def prompt_scores(self, rule: str, prompt: str) -> np.ndarray:
        return np.array([f.prompts[rule][prompt] for f in self.frames], dtype=np.float64)


def trace_source(source: str, spec: PolicySpec, backend, *, step: int = 1, rate_hz: float | None = None,
                 start_s: float | None = None, end_s: float | None = None, max_width: int = 640,
                 max_height: int = 480, bag_topic: str | None = None, progress=None) -> Trace:
    """Embed every kept frame with `backend` (activated) and score it with the policy's engines."""
    tracer = ScoreTracer(spec, backend.embed_texts)
    regions = list(spec.regions.values())
    frames = []
    for n, (index, media, image) in enumerate(iter_frames(source, step, rate_hz, start_s, end_s, max_width,
                                                          max_height, bag_topic)):
        embedding = backend.embed_images([image], regions)[0]
        frames.append(tracer.observe(media, index, embedding))
        if progress is not None:
            progress(n + 1, index)
    if not frames:
        raise ValueError(f'no frames selected from {source} (start {start_s}, end {end_s}, step {step})')
    return Trace(source, spec, getattr(backend, 'model_id', ''), frames)


# -- outputs ---------------------------------------------------------------------------------------------------
def write_csv(trace: Trace, path: Path) -> None:
    rules = [r.name for r in trace.spec.rules]
    prompt_cols = [(r, p) for r in rules for p in (trace.frames[0].prompts.get(r) or {})]
    with open(path, 'w', newline='', encoding='utf-8') as f:
        w = csv.writer(f)
        w.writerow(['time_s', 'sequence', 'action'] + [f'score:{r}' for r in rules]
                   + [f'prompt:{r}:{p}' for r, p in prompt_cols])
        for fr in trace.frames:
            w.writerow([f'{fr.stamp_s:.6f}', fr.sequence, fr.action] + [_num(fr.rules[r]) for r in rules]
                       + [_num(fr.prompts[r][p]) for r, p in prompt_cols])


def _num(x: float) -> str:
    return '' if x is None or not math.isfinite(x) else f'{x:.6f}'
