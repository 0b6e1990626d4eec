"""A video file -> a rosbag2 bag (MCAP or sqlite3) of sensor_msgs/Image (bgr8) or sensor_msgs/CompressedImage
(jpeg/png), one message per kept frame, on the pure-Python `rosbags` library (`vidaction-bag from-video`).

Time: a frame's header stamp and its bag (receive) timestamp are both `time_origin + media time`, where the
media time of frame i is i / fps (the convention of test/data/*labels.yaml). With the default origin 0
the stamps ARE media time, so replay results line up with labelled spans without any offset.
"""
from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..ingest.bags import BAG_VERSION, COMPRESSED, DEFAULT_TOPIC, IMAGE, NS, STORAGES, BagError, jazzy_typestore, \
    normalise_topic
from ..ingest.compressed import encode_compressed


@dataclass(frozen=True)
class VideoToBag:
    """What to write. Frame range is half-open: start_s <= media time < end_s."""
    topic: str | None = None          # default /image_raw, or /image_raw/compressed with compressed=True
    compressed: bool = False          # CompressedImage instead of Image (bgr8)
    codec: str = 'jpeg'               # compressed payload: jpeg or png
    jpeg_quality: int = 90
    width: int | None = None          # downscale to this width, keeping the aspect ratio (never upscales)
    start_s: float = 0.0
    end_s: float | None = None        # None: to the end of the video
    step: int = 1                     # keep every step-th frame of the range (5 fps from 10 fps: step=2)
    time_origin_s: float = 0.0        # added to media time for header stamps and bag times
    storage: str = 'mcap'
    frame_id: str = 'camera'
    fps: float | None = None          # override the container's frame rate (needed when it reports none)

    def validate(self) -> None:
        if self.storage not in STORAGES:
            raise BagError(f'storage {self.storage!r} not supported; choose one of {", ".join(STORAGES)}')
        if self.width is not None and self.width < 2:
            raise BagError(f'width must be >= 2, got {self.width}')
        if self.step < 1:
            raise BagError(f'step must be >= 1, got {self.step}')
        if not math.isfinite(self.start_s) or self.start_s < 0:
            raise BagError(f'start_s must be a finite time >= 0, got {self.start_s}')
        if self.end_s is not None and not self.end_s > self.start_s:
            raise BagError(f'end_s ({self.end_s}) must be after start_s ({self.start_s})')
        if not math.isfinite(self.time_origin_s) or self.time_origin_s < 0:
            raise BagError(f'time_origin_s must be a finite time >= 0, got {self.time_origin_s}')
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise BagError(f'fps must be > 0, got {self.fps}')
        if self.compressed and self.codec not in ('jpeg', 'png'):
            raise BagError(f'codec {self.codec!r} not supported; choose jpeg or png')
        if not 1 <= self.jpeg_quality <= 100:
            raise BagError(f'jpeg_quality must be in 1..100, got {self.jpeg_quality}')


@dataclass
class WriteResult:
    path: str
    topic: str
    msgtype: str
    count: int
    width: int
    height: int
    source_fps: float
    first_stamp_ns: int | None
    last_stamp_ns: int | None
    size_bytes: int


def frame_stamp_ns(index: int, fps: float, origin_ns: int = 0) -> int:
    """Media time of frame `index` in integer nanoseconds (exact for integer fps: 10 fps -> 100 ms steps)."""
    return origin_ns + int(round(index * NS / fps))


def seconds_to_ns(seconds: float) -> int:
    """Exact to the nanosecond for epoch-sized times too: seconds * 1e9 as one float loses ~256 ns at 1.7e18."""
    whole = math.floor(seconds)
    return int(whole) * NS + int(round((seconds - whole) * NS))


def frame_range(fps: float, start_s: float, end_s: float | None) -> tuple[int, int | None]:
    """First and one-past-last frame index of the media-time range [start_s, end_s)."""
    # The epsilon keeps 46.0 s at 10 fps on frame 460 despite binary floating point.
    first = max(0, math.ceil(start_s * fps - 1e-6))
    last = None if end_s is None else max(first, math.ceil(end_s * fps - 1e-6))
    return first, last


def _scaled_size(width: int, height: int, target_width: int | None) -> tuple[int, int]:
    if target_width is None or target_width >= width:
        return width, height
    return target_width, max(1, int(round(height * target_width / width)))


def write_video_bag(video: str, out_bag: str, options: VideoToBag = VideoToBag(),
                    progress: Callable[[int], None] | None = None) -> WriteResult:
    """Write the frames of `video` selected by `options` into a new bag directory `out_bag`.

    The bag directory must not exist (rosbags never overwrites); it is removed again when writing fails,
    so a failed run leaves nothing half-written behind.
    """
    import cv2
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.rosbag2.errors import WriterError

    options.validate()
    out = Path(out_bag)
    if out.exists():
        raise BagError(f'{out} exists already; choose a new bag directory (rosbag2 bags are never overwritten)')
    if not Path(video).is_file():
        raise BagError(f'video not found: {video}')
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise BagError(f'OpenCV cannot open video {video}')
    fps = options.fps or cap.get(cv2.CAP_PROP_FPS)
    if not (fps and math.isfinite(fps) and fps > 0):
        cap.release()
        raise BagError(f'{video} reports no frame rate; pass fps explicitly')
    first, last = frame_range(fps, options.start_s, options.end_s)
    origin_ns = seconds_to_ns(options.time_origin_s)
    topic = normalise_topic(options.topic or DEFAULT_TOPIC[options.compressed])
    msgtype = COMPRESSED if options.compressed else IMAGE

    store = jazzy_typestore()
    Header = store.types['std_msgs/msg/Header']
    Time = store.types['builtin_interfaces/msg/Time']
    Msg = store.types[msgtype]

    result = WriteResult(str(out), topic, msgtype, 0, 0, 0, float(fps), None, None, 0)
    writer = Writer(out, version=BAG_VERSION,
                    storage_plugin=StoragePlugin.MCAP if options.storage == 'mcap' else StoragePlugin.SQLITE3)
    try:
        writer.open()
        conn = writer.add_connection(topic, msgtype, typestore=store)
        index = 0
        while last is None or index < last:
            if index < first or (index - first) % options.step:
                # grab() skips the colour conversion of frames we do not keep; sequential reading rather than
                # seeking, because seeking in compressed streams lands on keyframes, not exact frames.
                if not cap.grab():
                    break
                index += 1
                continue
            ok, frame = cap.read()
            if not ok:
                break
            h, w = frame.shape[:2]
            size = _scaled_size(w, h, options.width)
            if size != (w, h):
                frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
            stamp = frame_stamp_ns(index, fps, origin_ns)
            header = Header(stamp=Time(sec=stamp // NS, nanosec=stamp % NS), frame_id=options.frame_id)
            if options.compressed:
                fmt, data = encode_compressed(frame, options.codec, options.jpeg_quality)
                msg = Msg(header=header, format=fmt, data=np.frombuffer(data, dtype=np.uint8))
            else:
                frame = np.ascontiguousarray(frame)
                msg = Msg(header=header, height=size[1], width=size[0], encoding='bgr8', is_bigendian=0,
                          step=size[0] * 3, data=frame.reshape(-1))
            # Bag time = header stamp: the bag records when the frame was captured, as if recorded live.
            writer.write(conn, stamp, store.serialize_cdr(msg, msgtype))
            result.count += 1
            result.width, result.height = size
            if result.first_stamp_ns is None:
                result.first_stamp_ns = stamp
            result.last_stamp_ns = stamp
            if progress is not None:
                progress(result.count)
            index += 1
        if result.count == 0:
            raise BagError(f'no frames in the range [{options.start_s}, {options.end_s}) s of {video} '
                           f'({cap.get(cv2.CAP_PROP_FRAME_COUNT):.0f} frames at {fps:g} fps)')
        writer.close()
    except BaseException as err:
        try:
            if writer.storage is not None:
                writer.abort()
        finally:
            shutil.rmtree(out, ignore_errors=True)
        if isinstance(err, WriterError):
            raise BagError(f'cannot write {out}: {err}') from err
        raise
    finally:
        cap.release()
    result.size_bytes = sum(f.stat().st_size for f in out.rglob('*') if f.is_file())
    return result
