"""What the pipeline saw and decided, drawn on the frame: the picture behind the overlay topic and the replay
report's thumbnails. Pure (numpy + OpenCV, no ROS): the node and the report feed it plain values.

Drawn, in this order (later on top):
  regions      each policy region's polygon outline, the deciding rule's region thicker and in the action's colour
  detections   each box with its class and confidence; boxes in the deciding region in the action's colour
  scores       the top rules by score as bars against their enter (solid tick) and exit (hollow tick) thresholds
  banner       the action, its trigger and camera->Action latency; red FAILSAFE banner with the reason when stale
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import cv2
import numpy as np

# BGR. Protective actions red, caution amber, the rest green; regions not deciding are drawn in grey-blue.
RED, AMBER, GREEN, GREY, WHITE, BLACK = (40, 40, 230), (0, 170, 255), (60, 190, 60), (200, 160, 120), \
    (255, 255, 255), (0, 0, 0)
CAUTION_CODES = {1}            # Action.ACTION_SLOW_DOWN
PROTECTIVE_CODES = {2, 3, 4, 5}  # HOVER, STOP, EMERGENCY_BRAKE, FAILSAFE
REGION_THICKNESS, DECIDING_REGION_THICKNESS, BOX_THICKNESS = 1, 3, 2
BANNER_H = 28                  # pixels: the top strip with the action
BAR_W, BAR_H, BAR_GAP = 120, 12, 6
FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True)
class Box:
    label: str
    confidence: float
    x_min: float               # normalised image coordinates, as Detection.msg
    y_min: float
    x_max: float
    y_max: float
    regions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Score:
    name: str
    score: float
    enter: float
    exit: float
    active: bool = False


@dataclass(frozen=True)
class OverlayState:
    action: str = ''
    action_code: int = 0
    trigger: str = ''
    latency_ms: float = math.nan
    reason: str = ''
    region: str = ''                                  # the deciding rule's region ('' = full frame)
    failsafe: bool = False                            # the watchdog fired: perception is stale
    regions: Mapping[str, Sequence[tuple[float, float]]] = field(default_factory=dict)
    boxes: Sequence[Box] = ()
    scores: Sequence[Score] = ()


WATCHDOG_TRIGGER = 'watchdog'   # Action.TRIGGER_WATCHDOG (no ROS import here)


def state_from_action(msg, regions: Mapping[str, Sequence[tuple[float, float]]]) -> OverlayState:
    """The drawable state of a vidaction_ros/Action (any object with its fields: the overlay node's live
    message, or one read back from the replay's Action bag)."""
    return OverlayState(
        action=msg.action, action_code=int(msg.action_code), trigger=msg.trigger, reason=msg.reason,
        latency_ms=float(msg.capture_to_decide_ms), region=msg.region, failsafe=msg.trigger == WATCHDOG_TRIGGER,
        regions=regions,
        boxes=tuple(Box(d.label, float(d.confidence), d.x_min, d.y_min, d.x_max, d.y_max, tuple(d.regions))
                    for d in msg.detections),
        scores=tuple(Score(s.name, float(s.score), float(s.enter), float(s.exit), bool(s.active))
                     for s in getattr(msg, 'scores', ())))


def action_colour(code: int, failsafe: bool = False) -> tuple[int, int, int]:
    if failsafe or code in PROTECTIVE_CODES:
        return RED
    return AMBER if code in CAUTION_CODES else GREEN


def to_pixels(points, width: int, height: int) -> np.ndarray:
    """Normalised (x, y) -> integer pixel coordinates (x * (w - 1), y * (h - 1)): 0 and 1 land on the edge
    pixels, so a region edge at x = 0.5 of a 641-px-wide frame is drawn on column 320."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return np.round(pts * [width - 1, height - 1]).astype(np.int32)


def render(image: np.ndarray, state: OverlayState, top_scores: int = 3) -> np.ndarray:
    """A copy of the BGR `image` with the overlay drawn on it."""
    out = np.ascontiguousarray(image).copy()
    h, w = out.shape[:2]
    colour = action_colour(state.action_code, state.failsafe)
    for name, polygon in state.regions.items():
        deciding = bool(state.region) and name == state.region
        cv2.polylines(out, [to_pixels(polygon, w, h)], True, colour if deciding else GREY,
                      DECIDING_REGION_THICKNESS if deciding else REGION_THICKNESS, cv2.LINE_AA)
        pts = to_pixels(polygon, w, h)
        top = pts[np.argmin(pts[:, 1])]              # the name beside the polygon's highest vertex
        cv2.putText(out, name, (int(min(top[0] + 4, w - 80)), int(max(top[1] - 4, BANNER_H + 12))), FONT, 0.45,
                    colour if deciding else GREY, 1, cv2.LINE_AA)
    for box in state.boxes:
        in_decision = not state.region or state.region in box.regions
        (x0, y0), (x1, y1) = to_pixels([(box.x_min, box.y_min), (box.x_max, box.y_max)], w, h)
        box_colour = colour if in_decision else GREY
        cv2.rectangle(out, (int(x0), int(y0)), (int(x1), int(y1)), box_colour, BOX_THICKNESS)
        _label(out, f'{box.label} {box.confidence:.2f}', int(x0), max(int(y0) - 4, BANNER_H + 12), box_colour)
    _score_bars(out, sorted(state.scores, key=lambda s: -_finite(s.score))[:top_scores])
    _banner(out, state, colour)
    return out


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -math.inf


def _label(out, text: str, x: int, y: int, colour) -> None:
    (tw, th), _ = cv2.getTextSize(text, FONT, 0.4, 1)
    cv2.rectangle(out, (x, y - th - 3), (x + tw + 4, y + 2), colour, -1)
    cv2.putText(out, text, (x + 2, y - 1), FONT, 0.4, BLACK, 1, cv2.LINE_AA)


def _score_bars(out, scores: Sequence[Score]) -> None:
    """Bars at the bottom left: the score's position on [min(exit, 0) .. max(enter, score) + margin]."""
    h = out.shape[0]
    for i, s in enumerate(reversed(scores)):
        y = h - 8 - i * (BAR_H + BAR_GAP) - BAR_H
        x = 8
        lo = min(0.0, s.exit, s.enter, _finite(s.score) if math.isfinite(s.score) else 0.0)
        hi = max(s.enter, s.exit, s.score if math.isfinite(s.score) else 0.0) * 1.25 + 1e-6
        span = hi - lo if hi > lo else 1.0

        def px(v: float) -> int:
            return x + int(round((v - lo) / span * BAR_W))
        cv2.rectangle(out, (x, y), (x + BAR_W, y + BAR_H), BLACK, -1)
        if math.isfinite(s.score):
            fill = RED if s.active else GREEN if s.score < s.exit else AMBER
            cv2.rectangle(out, (x, y + 2), (px(s.score), y + BAR_H - 2), fill, -1)
        cv2.line(out, (px(s.enter), y - 2), (px(s.enter), y + BAR_H + 2), WHITE, 2)       # enter: solid
        cv2.rectangle(out, (px(s.exit) - 1, y - 2), (px(s.exit) + 1, y + BAR_H + 2), WHITE, 1)   # exit: hollow
        value = f'{s.score:.3f}' if math.isfinite(s.score) else 'n/a'
        cv2.putText(out, f'{s.name} {value} (enter {s.enter:.3f})', (x + BAR_W + 6, y + BAR_H - 2), FONT, 0.4,
                    WHITE, 1, cv2.LINE_AA)


def _banner(out, state: OverlayState, colour) -> None:
    w = out.shape[1]
    cv2.rectangle(out, (0, 0), (w - 1, BANNER_H - 1), colour, -1)
    if state.failsafe:
        text = f'FAILSAFE {state.action}: {state.reason}'
    else:
        latency = f'{state.latency_ms:.0f} ms' if math.isfinite(state.latency_ms) else '-'
        text = f'{state.action} ({state.trigger})  camera->Action {latency}'
    cv2.putText(out, text[:120], (6, BANNER_H - 9), FONT, 0.5, WHITE, 1, cv2.LINE_AA)


def encode_jpeg(image: np.ndarray, quality: int = 80) -> bytes:
    if image.size == 0 or image.dtype != np.uint8:
        raise ValueError(f'cannot encode a {image.shape} {image.dtype} image as JPEG (need non-empty uint8)')
    ok, data = cv2.imencode('.jpg', image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f'cannot encode a {image.shape} {image.dtype} image as JPEG')
    return data.tobytes()
