"""A second opinion that runs offline here: describe the frame in words, then check the prompt against them.

No vision-language model ships offline, so this analyser builds the words itself from two models that do:
the COCO detector's people (YOLOv3-tiny, perception/coco_detector.py: count, where each person stands,
whether the feet fall in the policy's region) and the EfficientNet-Lite0 ImageNet classifier (what the region
looks like). Each fact becomes one short sentence ("a person close to the camera, on the left"; "a photo of a lawn, a park bench"). The
sentences and the action's prompts and contrast prompts are embedded with the MiniLM sentence model
(vidaction_ros.perception.text_encoder), and the answer is worked out like this:

    support(e)  = max cos(e, prompts) - max cos(e, contrast)        text margin of evidence sentence e
    t(e)        = clip((support(e) - text_low) / (text_high - text_low), 0, 1)
    w(e)        = min(1, detector confidence / detector_saturation)  for a person sentence (saturation 0.5:
                  YOLO's class x objectness score; 0.5 is already a sure person, a partly visible one
                  entering the frame scores 0.3-0.5)
                  sum of the listed class probabilities              for the scene sentence
    p           = 1 - prod_e (1 - w(e) * t(e))                      noisy-OR: "at least one fact supports it"

    verdict     = agree    (confidence p)                             when p >= agree_at
                  disagree (confidence (1 - p) * absence_weight)     when p <  disagree_below
                  unsure   (confidence 0)                             otherwise

Why sentence by sentence: one embedded paragraph mixes everything ("nothing but a street sign, a traffic
light" scored *for* "a pedestrian in the way"), and sentence embeddings do not understand negation, so no
embedded sentence says "nobody"; the absence of a supporting sentence is what says no (the answer text for
people does say "no person detected"). Why a margin over
the contrast prompts: raw MiniLM cosines between any two short English phrases share a large common part.
Why absence_weight: not seeing a person is weaker evidence than seeing one (the detector misses people who
are partly out of frame, sitting or small).

It differs from the hot path's embedding on purpose, so it is a second look rather than an echo: the
detector runs at a finer input (608 px instead of 416: small and partly visible people are found more often;
about twice the cost, affordable off the hot path), and the verdict comes from explicit facts about the
policy's region, not from a frame vector. Measured on vtest.avi (every 4th frame, 640x480, labels of
test/data/vtest_near_zone_labels.yaml, ambiguous edges left out): a person's feet in the near zone in 57 of
the 58 frames of the labelled span, and in none of the 140 frames outside it. (Until 2026-12-04 this analyser
used OpenCV's HOG people detector, which misses people who are partly out of frame: the hot path now fires
on them, so its second look must see them too.)
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .types import VERDICT_AGREE, VERDICT_DISAGREE, VERDICT_UNSURE, AnalyserUnavailable, Answer

# When the policy gives no contrast prompts for the action: what "nothing to worry about" looks like.
GENERIC_CONTRAST = ('an empty scene', 'nothing in the way', 'a clear path')


@dataclass(frozen=True)
class Person:
    x: float                        # foot point, normalised image coordinates
    y: float
    confidence: float               # HOG SVM score
    in_region: bool

    @property
    def where(self) -> str:
        return where_words(self.x, self.y)


@dataclass(frozen=True)
class Evidence:
    sentence: str
    weight: float                   # how sure the vision side is of the fact, 0..1
    kind: str                       # 'person' | 'scene'
    support: float = math.nan       # text margin: max cos to prompts - max cos to contrast
    strength: float = math.nan      # w * t, its share of p
    prompt: str = ''                # the prompt it matched best


def with_article(noun: str) -> str:
    return f'{"an" if noun[:1].lower() in "aeiou" else "a"} {noun}'


def where_words(x: float, y: float) -> str:
    """Position words for a foot point. Lower in the image is closer to the camera for any camera that
    looks forward or down at the ground, which is every camera this package is for."""
    side = 'on the left' if x < 1 / 3 else 'in the centre' if x < 2 / 3 else 'on the right'
    distance = 'close to the camera' if y >= 0.75 else 'at middle distance' if y >= 0.55 else 'far away'
    return f'{distance}, {side}'


class ImageNetClassifier:
    """EfficientNet-Lite0 (the cpu backend's ONNX export, cached once) as a plain top-k classifier."""

    def __init__(self, threads: int = 1):
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise AnalyserUnavailable(f'second_opinion needs onnxruntime: {err}') from None
        from ..perception.backends.conse_cpu import IMAGENET_MEAN, IMAGENET_STD
        from ..perception.concepts import cache_dir, imagenet_class_names
        from ..perception.backends.onnx_export import cached_onnx
        try:
            model_file = cached_onnx(cache_dir())
        except (ImportError, FileNotFoundError) as err:
            raise AnalyserUnavailable(f'cannot prepare the EfficientNet-Lite0 ONNX model: {err}') from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(str(model_file), options, providers=['CPUExecutionProvider'])
        self._mean, self._std = IMAGENET_MEAN, IMAGENET_STD
        self.names = [n.split(',')[0].strip() for n in imagenet_class_names()]
        self.input_size = 224

    def top(self, bgr: np.ndarray, k: int = 3) -> list[tuple[str, float]]:
        import cv2
        small = cv2.resize(bgr, (self.input_size, self.input_size), interpolation=cv2.INTER_AREA)
        rgb = small[:, :, ::-1].astype(np.float32) * (1.0 / 255.0)
        batch = ((rgb - self._mean) / self._std).transpose(2, 0, 1)[None]
        logits = self._session.run(None, {'input': np.ascontiguousarray(batch)})[0][0]
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        best = np.argsort(probs)[::-1][:k]
        return [(self.names[i], float(probs[i])) for i in best]


class SecondOpinionAnalyser:
    name = 'second_opinion'
    model_id = 'yolov3-tiny-608+efficientnet_lite0/minilm-l6-int8'

    def __init__(self, threads: int = 1, detector_input_size: int = 608,
                 detector_min_confidence: float = 0.3, detector_saturation: float = 0.5, top_classes: int = 3,
                 text_low: float = 0.05, text_high: float = 0.35, agree_at: float = 0.5,
                 disagree_below: float = 0.2, absence_weight: float = 0.8,
                 detector=None, classifier=None, text_encoder=None):
        if not 0.0 <= disagree_below <= agree_at <= 1.0:
            raise ValueError(f'need 0 <= disagree_below <= agree_at <= 1, got {disagree_below}, {agree_at}')
        if not text_low < text_high:
            raise ValueError(f'need text_low < text_high, got {text_low}, {text_high}')
        if detector_saturation <= 0 or not 0.0 <= absence_weight <= 1.0 or top_classes < 1:
            raise ValueError('need detector_saturation > 0, absence_weight in [0, 1] and top_classes >= 1')
        self.detector_saturation = detector_saturation
        self.top_classes = top_classes
        self.text_low, self.text_high = text_low, text_high
        self.agree_at, self.disagree_below = agree_at, disagree_below
        self.absence_weight = absence_weight
        if detector is None:
            from ..perception.coco_detector import CocoDetector, ModelFileError
            try:
                detector = CocoDetector(input_size=detector_input_size, min_confidence=detector_min_confidence)
            except ModelFileError as err:
                raise AnalyserUnavailable(str(err)) from None
        self.detector = detector
        self.classifier = classifier or ImageNetClassifier(threads)
        if text_encoder is None:
            try:
                from ..perception.text_encoder import TextEncoder
                text_encoder = TextEncoder(threads=threads)
            except (ImportError, FileNotFoundError) as err:
                raise AnalyserUnavailable(f'second_opinion needs the MiniLM text model: {err}') from None
        self.text = text_encoder
        self._text_cache: dict[str, np.ndarray] = {}   # prompts repeat at every escalation

    @property
    def description(self) -> str:
        return f'{self.name} ({self.model_id})'

    # -- seeing ----------------------------------------------------------------------------------------------
    def people(self, frame: np.ndarray, region) -> list[Person]:
        out = []
        for d in self.detector.detect(frame):
            if d.label != 'person':
                continue
            x, y = d.foot
            out.append(Person(x, y, float(d.confidence), region is None or region.contains(x, y)))
        return out

    def scene(self, frame: np.ndarray, region) -> list[tuple[str, float]]:
        if region is not None:
            h, w = frame.shape[:2]
            x0, y0, x1, y1 = region.pixel_bbox(w, h)
            frame = frame[y0:y1, x0:x1]
        return self.classifier.top(frame, self.top_classes)

    def evidence(self, people: Sequence[Person], classes: Sequence[tuple[str, float]]) -> list[Evidence]:
        items = [Evidence(f'a person {p.where}', min(1.0, p.confidence / self.detector_saturation), 'person')
                 for p in people if p.in_region]
        if classes:
            items.append(Evidence('a photo of ' + ', '.join(with_article(name) for name, _ in classes),
                                  min(1.0, sum(prob for _, prob in classes)), 'scene'))
        return items

    # -- checking ---------------------------------------------------------------------------------------------
    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            for text, vector in zip(missing, self.text.encode(missing)):
                self._text_cache[text] = vector
            if len(self._text_cache) > 4096:         # evidence sentences vary; keep the cache bounded
                self._text_cache = {t: self._text_cache[t] for t in texts}
        return np.stack([self._text_cache[t] for t in texts])

    def weigh(self, items: Sequence[Evidence], prompts: Sequence[str], contrast: Sequence[str]
              ) -> tuple[float, list[Evidence]]:
        """(p, items with support and strength filled in)."""
        if not items:
            return 0.0, []
        vectors = self._embed([e.sentence for e in items] + list(prompts) + list(contrast))
        n, m = len(items), len(prompts)
        ev, pv, cv = vectors[:n], vectors[n:n + m], vectors[n + m:]
        to_prompts = ev @ pv.T
        support = to_prompts.max(axis=1) - (ev @ cv.T).max(axis=1)
        t = np.clip((support - self.text_low) / (self.text_high - self.text_low), 0.0, 1.0)
        weighed = []
        miss = 1.0
        for e, s, ti, best in zip(items, support, t, to_prompts.argmax(axis=1)):
            strength = float(e.weight * ti)
            miss *= 1.0 - strength
            weighed.append(Evidence(e.sentence, e.weight, e.kind, float(s), strength, prompts[int(best)]))
        return 1.0 - miss, weighed

    def analyse(self, frame_bgr: np.ndarray, question: str, context: Mapping[str, Any]) -> Answer:
        from ..perception.backends.base import check_bgr_frame
        started = time.perf_counter()
        check_bgr_frame(frame_bgr)
        region = context.get('region')
        region_name = (context.get('region_name') or '').replace('_', ' ') if region is not None else ''
        prompts = tuple(p for p in (context.get('prompts') or ()) if p) or (question,)
        contrast = tuple(c for c in (context.get('contrast') or ()) if c) or GENERIC_CONTRAST
        people = self.people(frame_bgr, region)
        classes = self.scene(frame_bgr, region)
        p, items = self.weigh(self.evidence(people, classes), prompts, contrast)
        if p >= self.agree_at:
            verdict, confidence = VERDICT_AGREE, p
        elif p < self.disagree_below:
            verdict, confidence = VERDICT_DISAGREE, (1.0 - p) * self.absence_weight
        else:
            verdict, confidence = VERDICT_UNSURE, 0.0
        text = self.describe(people, classes, region_name, items, p, verdict)
        return Answer(verdict=verdict, confidence=float(min(1.0, max(0.0, confidence))), text=text,
                      support=float(p), elapsed_ms=(time.perf_counter() - started) * 1e3,
                      details={'people_in_region': sum(x.in_region for x in people), 'people': len(people),
                               'classes': classes, 'evidence': items})

    @staticmethod
    def describe(people, classes, region_name, items, p, verdict) -> str:
        """The answer in words: what was seen, and which fact decided."""
        place = region_name or 'the frame'
        inside = [x for x in people if x.in_region]
        outside = [x for x in people if not x.in_region]

        def listing(group):
            return '; '.join(f'{x.where} (detector {x.confidence:.2f})' for x in group)

        parts = [f'{place}: ' + (f'{len(inside)} '
                                 f'{"person" if len(inside) == 1 else "people"} - {listing(inside)}'
                                 if inside else 'no person detected')]
        if outside:
            parts.append(f'elsewhere: {len(outside)} {"person" if len(outside) == 1 else "people"} - '
                         f'{listing(outside)}')
        if classes:
            parts.append(f'{place} looks like: ' + ', '.join(f'{n} {q:.2f}' for n, q in classes))
        if items:
            best = max(items, key=lambda e: e.strength)
            parts.append(f'best evidence: "{best.sentence}" for "{best.prompt}" (text margin {best.support:+.2f}, '
                         f'strength {best.strength:.2f})')
        answer = {VERDICT_AGREE: 'yes', VERDICT_DISAGREE: 'no', VERDICT_UNSURE: 'cannot tell'}[verdict]
        parts.append(f'support {p:.2f}: {answer}')
        return '. '.join(parts) + '.'
