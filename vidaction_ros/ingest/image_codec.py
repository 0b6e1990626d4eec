"""Raw image buffers <-> bgr8 numpy arrays, with the checks a bag recorded elsewhere needs.

Pure numpy/OpenCV; the ROS message wrapper lives in conversions.py.
"""
from __future__ import annotations

import numpy as np

# encoding -> (channels, numpy dtype)
ENCODINGS = {'bgr8': (3, np.uint8), 'rgb8': (3, np.uint8), 'mono8': (1, np.uint8),
             'bgra8': (4, np.uint8), 'rgba8': (4, np.uint8)}


class ImageFormatError(ValueError):
    """A frame that cannot be decoded: the message says what was wrong."""


def decode_raw(height: int, width: int, encoding: str, step: int, data) -> np.ndarray:
    """Decode a sensor_msgs/Image-style buffer into a bgr8 HxWx3 array (copies only to convert colour)."""
    if encoding not in ENCODINGS:
        raise ImageFormatError(f'unsupported encoding {encoding!r}; supported: {sorted(ENCODINGS)}')
    if height <= 0 or width <= 0:
        raise ImageFormatError(f'zero-size image {width}x{height}')
    channels, dtype = ENCODINGS[encoding]
    row_bytes = width * channels * np.dtype(dtype).itemsize
    if step < row_bytes:
        raise ImageFormatError(f'step {step} < width*channels = {row_bytes} for {encoding}')
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size < step * height:
        raise ImageFormatError(f'data has {buf.size} bytes, expected step*height = {step * height}')
    rows = buf[:step * height].reshape(height, step)[:, :row_bytes]
    image = rows.reshape(height, width, channels) if channels > 1 else rows.reshape(height, width)
    return to_bgr(image, encoding)


def to_bgr(image: np.ndarray, encoding: str) -> np.ndarray:
    import cv2
    if encoding == 'bgr8':
        return image
    if encoding == 'rgb8':
        return cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if encoding == 'mono8':
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if encoding == 'bgra8':
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if encoding == 'rgba8':
        return cv2.cvtColor(image, cv2.COLOR_RGBA2BGR)
    raise ImageFormatError(f'unsupported encoding {encoding!r}')
