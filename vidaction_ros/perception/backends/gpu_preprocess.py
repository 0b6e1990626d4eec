"""Image preprocessing in torch, on whatever device the frames already are: the GPU half of the torch_cuda
path (uint8 frames go to the GPU once; resize, crop, BGR->RGB and normalisation happen there).

It computes the same numbers as `joint.preprocess` (cv2 on the CPU), so an embedder on torch_cuda and one on
clip_onnx / tensorrt (which use joint.preprocess) put the same frame at the same point of the space:
  * the resize geometry (shortest side + centre crop, or squash; output sizes rounded the same way) and the
    choice of filter mirror joint.preprocess line for line (`plan`); test/unit/test_torch_cuda_path.py pins
    the two together;
  * downscaling is cv2's INTER_AREA exactly: a separable area-coverage matrix per axis (OpenCV's
    computeResizeAreaTab), applied as two matmuls. torch's own `interpolate(mode='area')` (adaptive average
    pooling) and `antialias=True` (a triangle filter) both differ from cv2 at non-integer ratios, and a
    matmul is what a GPU does best; the centre crop is folded in by keeping only the crop's rows of the
    matrices, so discarded pixels are never computed;
  * upscaling is `interpolate(mode='bicubic', align_corners=False)`: the same kernel (a = -0.75), the same
    half-pixel centres and the same clamped border as cv2's INTER_CUBIC;
  * the resized image is rounded and clamped to 0..255, as cv2 does when it writes its uint8 result.
On the CPU the result equals joint.preprocess to float rounding; on a GPU, TF32 matmuls (if a process turns
them on) move values by well under one grey level.

Pure functions of their inputs; device-resident weight matrices are kept in a dict the caller owns
(`cache`), so a backend frees them with its model. Works on any torch device, hence testable on the CPU.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .joint import ModelSpec

MIN_SIDE = 8   # as base.check_bgr_frame
MAX_CACHED = 256   # weight matrices kept per cache; a camera and its regions need a handful


def check_frame_tensor(frame) -> torch.Tensor:
    """Reject tensors the models cannot use, with the same wording as base.check_bgr_frame."""
    if not isinstance(frame, torch.Tensor):
        raise ValueError(f'frame must be a numpy array or a torch tensor, got {type(frame).__name__}')
    if frame.dtype != torch.uint8:
        raise ValueError(f'frame must be uint8, got {frame.dtype}')
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f'frame must be HxWx3 (bgr8), got shape {tuple(frame.shape)}')
    if frame.shape[0] < MIN_SIDE or frame.shape[1] < MIN_SIDE:
        raise ValueError(f'frame too small: {frame.shape[1]}x{frame.shape[0]}')
    return frame


def plan(h: int, w: int, spec: ModelSpec) -> tuple[str, int, int, int, int]:
    """(filter, resized_h, resized_w, crop_y0, crop_x0) for an h x w crop: joint.preprocess's choices."""
    size = spec.image_size
    if spec.resize == 'shortest_crop':
        scale = size / min(h, w)
        rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
        return ('area' if scale < 1 else 'cubic'), rh, rw, (rh - size) // 2, (rw - size) // 2
    return ('area' if size < min(h, w) else 'cubic'), size, size, 0, 0


def area_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float64 weights of cv2 INTER_AREA along one axis (downscale, in >= out): each
    output pixel averages the input cells it covers, partial cells weighted by coverage. Transcribes
    OpenCV's computeResizeAreaTab (imgproc/src/resize.cpp), thresholds included."""
    scale = in_size / out_size
    weights = np.zeros((out_size, in_size))
    for dx in range(out_size):
        fsx1 = dx * scale
        fsx2 = fsx1 + scale
        cell = min(scale, in_size - fsx1)
        sx2 = min(math.floor(fsx2), in_size - 1)
        sx1 = min(math.ceil(fsx1), sx2)
        if sx1 - fsx1 > 1e-3:
            weights[dx, sx1 - 1] += (sx1 - fsx1) / cell
        weights[dx, sx1:sx2] += 1.0 / cell
        if fsx2 - sx2 > 1e-3:
            weights[dx, sx2] += min(fsx2 - sx2, 1.0, cell) / cell
    return weights


def _area_weights(cache: dict, in_size: int, out_size: int, start: int, count: int,
                  device: torch.device) -> torch.Tensor:
    """Rows start..start+count of area_matrix, float32 on device; cached (sizes repeat every frame)."""
    key = ('area', in_size, out_size, start, count, str(device))
    weights = cache.get(key)
    if weights is None:
        if len(cache) >= MAX_CACHED:
            cache.clear()     # frame / region sizes keep changing (a calibration sweep): do not grow forever
        weights = torch.from_numpy(area_matrix(in_size, out_size)[start:start + count]).to(
            device=device, dtype=torch.float32)
        cache[key] = weights
    return weights


def _norm_constants(cache: dict, spec: ModelSpec, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # float32 products, as joint.preprocess computes them, so both paths subtract the same numbers
    key = ('norm', spec.mean, spec.std, str(device))
    consts = cache.get(key)
    if consts is None:
        mean = np.asarray(spec.mean, np.float32) * 255.0
        inv_std = 1.0 / (np.asarray(spec.std, np.float32) * 255.0)
        consts = tuple(torch.from_numpy(v.astype(np.float32)).to(device).view(3, 1, 1) for v in (mean, inv_std))
        cache[key] = consts
    return consts


def resize_crop(crop: torch.Tensor, spec: ModelSpec, cache: dict | None = None) -> torch.Tensor:
    """One HxWx3 uint8 BGR tensor (a view into a larger frame is fine) -> (3, S, S) float32 BGR, 0..255,
    resized and centre-cropped as joint.preprocess does."""
    cache = {} if cache is None else cache
    size = spec.image_size
    h, w = int(crop.shape[0]), int(crop.shape[1])
    mode, rh, rw, y0, x0 = plan(h, w, spec)
    img = crop.permute(2, 0, 1).to(torch.float32).contiguous()       # (3, h, w)
    if mode == 'area':
        wy = _area_weights(cache, h, rh, y0, size, img.device)       # (S, h): only the crop's rows
        wx = _area_weights(cache, w, rw, x0, size, img.device)       # (S, w)
        # Contract the axis that shrinks the tensor most first: fewer multiply-adds for the second matmul.
        if size * h * w + size * w * size <= h * w * size + size * h * size:
            out = torch.matmul(torch.matmul(wy, img), wx.t())
        else:
            out = torch.matmul(wy, torch.matmul(img, wx.t()))
    else:
        out = F.interpolate(img[None], size=(rh, rw), mode='bicubic', align_corners=False)[0]
        out = out[:, y0:y0 + size, x0:x0 + size]
    # cv2 writes uint8: round half to even (as its cvRound) and saturate (bicubic overshoots at edges).
    return out.round_().clamp_(0.0, 255.0)


def preprocess(crops: Sequence[torch.Tensor], spec: ModelSpec, out: torch.Tensor | None = None,
               cache: dict | None = None) -> torch.Tensor:
    """HxWx3 uint8 BGR tensors -> (N, 3, S, S) normalised RGB on the crops' device: joint.preprocess in torch.

    `out` (N, 3, S, S) of any float dtype on that device receives the result (a CUDA graph's static input,
    for one); else a float32 tensor is returned. `cache` keeps weight matrices between calls."""
    cache = {} if cache is None else cache
    size = spec.image_size
    if not crops:
        raise ValueError('preprocess needs at least one crop')
    device = crops[0].device
    if out is None:
        out = torch.empty((len(crops), 3, size, size), dtype=torch.float32, device=device)
    elif tuple(out.shape) != (len(crops), 3, size, size):
        raise ValueError(f'out has shape {tuple(out.shape)}, expected {(len(crops), 3, size, size)}')
    mean, inv_std = _norm_constants(cache, spec, device)
    for i, crop in enumerate(crops):
        if crop.device != device:
            raise ValueError(f'crop {i} is on {crop.device}, crop 0 on {device}: move frames to one device first')
        bgr = resize_crop(crop, spec, cache)
        out[i].copy_((bgr.flip(0) - mean) * inv_std)        # BGR -> RGB, then the model's mean / std
    return out
