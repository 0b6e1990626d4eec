"""Frame sources (video file, V4L2 device, RTSP/HTTP stream) and the capture thread.

No ROS here: the camera node adapts this core, as usb_cam's driver knows nothing of ROS. The capture
thread never waits for inference: by default it grabs, downscales to the working resolution and overwrites
the newest slot (latest frame wins), so a slow consumer costs dropped frames, never stale ones; with an
`on_frame` hook it hands each grabbed frame to that hook on its own thread instead (the camera node's:
rate, downscale into the transport's buffer, gate, publish — a fraction of a millisecond that never waits
for a consumer either).
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np


class SourceError(RuntimeError):
    """A source cannot be opened or has failed."""


@dataclass
class CapturedFrame:
    image: np.ndarray          # bgr8 at working resolution, owned by whoever holds it (never written again)
    index: int                 # frame number from the source since open (media order)
    media_s: float | None      # media time for files (frame index / fps); None for live sources
    captured_wall_s: float     # time.time() right after the grab
    source_size: tuple[int, int]   # (width, height) delivered by the source


# Query parameters that carry secrets in IP-camera URLs (http://cam/video.cgi?user=admin&pwd=...).
_SECRET_QUERY = re.compile(r'(?i)([?&;](?:password|passwd|pass|pwd|token|access_token|auth|key|api_key|apikey|'
                           r'secret|signature|sig)=)[^&;#]*')


def redact_url(url: str) -> str:
    """rtsp://user:secret@host/stream -> rtsp://***@host/stream: credentials never reach a log.

    The user-info is cut up to the *last* '@' before the query, as FFmpeg splits it, so a password with an
    unescaped '@' or '/' (rtsp://admin:p@ss/w@cam/live) does not leak its tail (cutting at the first '@'
    did). Secret query values (?pwd=..., &token=...) become ***."""
    url = re.sub(r'(?<=://)[^?#]*@', '***@', url)
    return _SECRET_QUERY.sub(r'\1***', url)


def classify_source(uri: str) -> str:
    if re.match(r'^(rtsp|rtsps|http|https)://', uri):
        return 'stream'
    if re.match(r'^(/dev/video\d+|\d+)$', uri):
        return 'v4l2'
    return 'file'


def working_size(width: int, height: int, max_width: int, max_height: int) -> tuple[int, int]:
    """Largest size within (max_width, max_height) keeping the aspect ratio; never upscales."""
    scale = min(1.0, max_width / width, max_height / height)
    return max(1, int(round(width * scale))), max(1, int(round(height * scale)))


def downscale(image: np.ndarray, max_width: int, max_height: int) -> np.ndarray:
    import cv2
    h, w = image.shape[:2]
    size = working_size(w, h, max_width, max_height)
    if size == (w, h):
        return image
    return cv2.resize(image, size, interpolation=shrink_interpolation((w, h), size))


def shrink_interpolation(source: tuple[int, int], size: tuple[int, int]) -> int:
    """cv2 interpolation for shrinking source (w, h) to size: INTER_AREA (proper averaging, no aliasing) from 2x
    down, bilinear for a milder shrink, where it already draws on every source pixel. INTER_AREA's general
    (non-integer) path is slow: 768x576 -> 640x480 costs 1.96 ms on the 2-core machine against 0.34 ms
    bilinear, pixels 0.36 / 255 apart on average (the demo video, 2026-12-05), and that was most of the
    camera's own time per frame."""
    import cv2
    mild = size[0] * 2 > source[0] and size[1] * 2 > source[1]
    return cv2.INTER_LINEAR if mild else cv2.INTER_AREA


DEMO_VIDEO = '/usr/share/doc/opencv-doc/examples/data/vtest.avi'   # the bundled demo video (Debian opencv-doc)


def demo_frames(width: int, height: int, count: int = 30, synthetic_if_missing: bool = False) -> list[np.ndarray]:
    """The first `count` frames of the demo video scaled to width x height, C-contiguous bgr8 (benches).
    synthetic_if_missing: moving gradients instead when OpenCV or the video is missing (a GPU machine without
    either); otherwise SystemExit saying what to install."""
    frames = []
    try:
        import cv2
        cap = cv2.VideoCapture(DEMO_VIDEO)
        while len(frames) < count:
            ok, frame = cap.read()
            if not ok:
                break
            interp = cv2.INTER_AREA if width < frame.shape[1] else cv2.INTER_LINEAR
            frames.append(np.ascontiguousarray(cv2.resize(frame, (width, height), interpolation=interp)))
        cap.release()
    except ImportError:
        pass
    if frames:
        return frames
    if not synthetic_if_missing:
        raise SystemExit(f'cannot read the demo video {DEMO_VIDEO} (apt-get install opencv-doc)')
    ramp = np.arange(width, dtype=np.uint32)[None, :, None] + np.arange(height, dtype=np.uint32)[:, None, None]
    return [np.ascontiguousarray(np.broadcast_to((ramp + i) % 256, (height, width, 3)).astype(np.uint8))
            for i in range(count)]


def downscale_into(image: np.ndarray, out: np.ndarray) -> None:
    """downscale() into a preallocated bgr8 array (a transport loan) whose shape is working_size's."""
    import cv2
    if image.shape == out.shape:
        np.copyto(out, image)
        return
    size = (out.shape[1], out.shape[0])
    result = cv2.resize(image, size, dst=out,
                        interpolation=shrink_interpolation((image.shape[1], image.shape[0]), size))
    if result is not out:   # cv2 re-allocates when dst does not fit: never publish an unfilled loan
        raise ValueError(f'cannot downscale {image.shape} into {out.shape}')


class OpenCvSource:
    """A cv2.VideoCapture over a file, a V4L2 device or a network stream."""

    def __init__(self, uri: str, loop: bool = False):
        self.uri = uri
        self.kind = classify_source(uri)
        self.loop = loop and self.kind == 'file'
        self._cap = None
        self.fps = 0.0
        self._index = 0
        self.loops = 0

    @property
    def display_uri(self) -> str:
        return redact_url(self.uri)

    @property
    def is_live(self) -> bool:
        return self.kind != 'file'

    def open(self) -> None:
        import cv2
        if self.kind == 'file':
            if not os.path.isfile(self.uri):
                raise SourceError(f'video file not found: {self.uri}')
        if self.kind == 'v4l2' and self.uri.startswith('/dev/') and not os.path.exists(self.uri):
            # Say why instead of OpenCV's bare failure: the usual cause is a camera unplugged (or not yet
            # enumerated after a replug); the capture thread keeps retrying with backoff.
            raise SourceError(f'cannot open v4l2 source {self.uri}: no such device (unplugged?)')
        target = int(self.uri.replace('/dev/video', '')) if self.kind == 'v4l2' else self.uri
        cap = cv2.VideoCapture(target, cv2.CAP_V4L2) if self.kind == 'v4l2' else cv2.VideoCapture(target)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f'cannot open {self.kind} source {self.display_uri}')
        if self.kind == 'stream':
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # keep the decoder's queue short: latest frame wins
        self._cap = cap
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if not (0.0 < self.fps < 1000.0):
            self.fps = 30.0
        self._index = 0

    def read(self) -> tuple[np.ndarray | None, int, float | None]:
        """Returns (image, index, media_s); image None at end of file or on a failed grab."""
        if self._cap is None:
            raise SourceError('source not open')
        ok, image = self._cap.read()
        if not ok and self.loop:
            import cv2
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            self.loops += 1
            ok, image = self._cap.read()
        if not ok or image is None:
            return None, self._index, None
        index = self._index
        self._index += 1
        media = index / self.fps if self.kind == 'file' else None
        return image, index, media

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
        self._cap = None


class Backoff:
    """Exponential reconnect backoff: initial, doubling, capped."""

    def __init__(self, initial_s: float = 0.5, max_s: float = 10.0):
        self.initial_s, self.max_s = initial_s, max_s
        self.current = initial_s

    def next_delay(self) -> float:
        delay = self.current
        self.current = min(self.max_s, self.current * 2.0)
        return delay

    def reset(self) -> None:
        self.current = self.initial_s


class LatestFrameSlot:
    """One-slot mailbox between the capture thread and the publisher: a newer frame replaces an unread one."""

    def __init__(self):
        self._cond = threading.Condition()
        self._frame: CapturedFrame | None = None
        self.overwritten = 0   # frames captured but replaced before anybody took them

    def put(self, frame: CapturedFrame) -> None:
        with self._cond:
            if self._frame is not None:
                self.overwritten += 1
            self._frame = frame
            self._cond.notify_all()

    def take(self, timeout: float | None = None) -> CapturedFrame | None:
        with self._cond:
            if self._frame is None and timeout:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            return frame


class CaptureThread:
    """Grabs frames on its own thread and keeps only the newest. Reconnects a live source with backoff.

    `realtime` paces a file at its own fps, as a camera would deliver it; without it a file is read as
    fast as it decodes (still latest-frame-wins: a slow consumer sees skipped frames).
    """

    def __init__(self, source: OpenCvSource, max_width: int, max_height: int, realtime: bool = True,
                 backoff: Backoff | None = None, logger: logging.Logger | None = None,
                 on_state: Callable[[str], None] | None = None,
                 on_frame: Callable[[np.ndarray, int, float | None, float], None] | None = None,
                 on_finished: Callable[[], None] | None = None):
        """on_frame(image, index, media_s, grabbed_wall_s): called on the capture thread with each grabbed
        frame at source resolution, in place of the downscale and the slot. It must return quickly and never
        wait for a consumer; an exception from it is treated like a failed grab (logged, source reopened).
        on_finished(): called once when `finished` is set (end of a file, a file that cannot be opened)."""
        self.source = source
        self.max_width, self.max_height = max_width, max_height
        self.realtime = realtime
        self.backoff = backoff or Backoff()
        self.log = logger or logging.getLogger('vidaction_ros.capture')
        self.on_state = on_state
        self.on_frame = on_frame
        self.on_finished = on_finished
        self.slot = LatestFrameSlot()
        self.captured = 0
        self.reconnects = 0
        self.state = 'idle'
        self.finished = threading.Event()   # set at end of a non-looping file
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name='capture', daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.source.close()

    def _end(self) -> None:
        self.finished.set()
        if self.on_finished is not None:
            self.on_finished()

    def _set_state(self, state: str, detail: str = '') -> None:
        # Logged once per state change, not once per failed attempt: a camera unplugged for an hour
        # must not flood the log.
        if state != self.state:
            self.state = state
            message = f'capture {state}: {self.source.display_uri}' + (f' ({detail})' if detail else '')
            # Two call sites, not one call through a chosen method: rclpy's logger refuses a second severity
            # from the same call site ("Logger severity cannot be changed between calls"), which killed the
            # capture thread on the first reconnect.
            if state in ('lost', 'reconnecting'):
                self.log.warning(message)
            else:
                self.log.info(message)
            if self.on_state:
                self.on_state(state)

    def _open_with_backoff(self) -> bool:
        while not self._stop.is_set():
            try:
                self.source.open()
                self.backoff.reset()
                self._set_state('streaming')
                return True
            except SourceError as err:
                if not self.source.is_live:
                    self._set_state('failed', str(err))
                    self._end()
                    return False
                # The first failure says how it will retry; later attempts are silent until the state changes.
                self._set_state('reconnecting', f'{err}; retrying with backoff {self.backoff.initial_s:g} s '
                                                f'doubling to {self.backoff.max_s:g} s')
                self.reconnects += 1
                self._stop.wait(self.backoff.next_delay())
        return False

    def _run(self) -> None:
        # Nothing may end the capture thread of a live camera but stop(): an unexpected error (a driver, a
        # decoder) is logged and treated as a lost stream, reopened with backoff.
        while not self._stop.is_set():
            try:
                self._capture()
                return
            except Exception as err:  # noqa: BLE001 - see above
                self.log.error(f'capture failed: {self.source.display_uri}: {type(err).__name__}: {err}')
                self.state = 'lost'
                self.source.close()
                if not self.source.is_live:
                    self._end()
                    return
                self._stop.wait(self.backoff.next_delay())

    def _capture(self) -> None:
        if not self._open_with_backoff():
            return
        period = 1.0 / self.source.fps
        next_due = time.monotonic()
        while not self._stop.is_set():
            image, index, media = self.source.read()
            if image is None:
                if not self.source.is_live:
                    self._set_state('finished')
                    self._end()
                    return
                self._set_state('lost', 'grab failed')
                self.source.close()
                if not self._open_with_backoff():
                    return
                continue
            grabbed = time.time()
            self.captured += 1
            if self.on_frame is not None:
                self.on_frame(image, index, media, grabbed)
            else:
                h, w = image.shape[:2]
                small = downscale(image, self.max_width, self.max_height)
                self.slot.put(CapturedFrame(small, index, media, grabbed, (w, h)))
            if self.realtime and not self.source.is_live:
                next_due += period
                delay = next_due - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    next_due = time.monotonic()  # fell behind (slow decode): don't burst to catch up
