"""People detection with OpenCV's HOG + linear SVM detector (ships inside opencv-python, no download).

The offline default's lighter alternative to the COCO detector (`detector: hog`), and the people counter of the
escalation's second opinion. It finds upright, whole, > ~100 px people only. The detector
searches only the lower part of the frame (`search_top`): on an elevated camera the upper part is far
away, where people are too small for the 64x128 HOG window anyway, and skipping it cuts the cost ~3x.
"""
from __future__ import annotations

import numpy as np

from .detections import Detection


# The default people detector's 64x128 window holds a ~96 px person with 16 px of margin below the feet, so
# the ground contact point is 1/8 of the box above its bottom.
HOG_FOOT_MARGIN = 1.0 / 8.0


class HogPersonDetector:
    def __init__(self, search_top: float = 0.4, min_confidence: float = 0.5, hit_threshold: float = 0.0,
                 win_stride: int = 8, scale: float = 1.05):
        import cv2
        if not 0.0 <= search_top < 1.0:
            raise ValueError(f'search_top must be in [0, 1), got {search_top}')
        self._cv2 = cv2
        self._hog = cv2.HOGDescriptor()
        self._hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self.search_top = search_top
        self.min_confidence = min_confidence
        self.hit_threshold = hit_threshold
        self.win_stride = (win_stride, win_stride)
        self.scale = scale

    def detect(self, bgr: np.ndarray) -> list[Detection]:
        h, w = bgr.shape[:2]
        y0 = int(round(h * self.search_top))
        band = bgr[y0:]
        if band.shape[0] < 128 or band.shape[1] < 64:
            return []  # smaller than one HOG window: nothing can be found
        rects, weights = self._hog.detectMultiScale(
            band, hitThreshold=self.hit_threshold, winStride=self.win_stride, padding=(8, 8), scale=self.scale)
        out = []
        for (x, y, bw, bh), conf in zip(np.asarray(rects).reshape(-1, 4), np.ravel(weights)):
            if conf < self.min_confidence:
                continue
            out.append(Detection(x / w, (y + y0) / h, (x + bw) / w, (y + y0 + bh) / h, float(conf),
                                 label='person', foot_margin=HOG_FOOT_MARGIN))
        return out
