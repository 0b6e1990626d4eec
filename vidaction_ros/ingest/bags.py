"""Rosbag2 I/O for camera frames on the pure-Python `rosbags` library: no rclpy, no rosbag2 install.

  write_video_bag  a video file -> a rosbag2 bag (MCAP or sqlite3) of sensor_msgs/Image (bgr8) or
                   sensor_msgs/CompressedImage (jpeg/png), one message per kept frame
  read_frames      a bag's Image / CompressedImage topics -> (topic, bag_time_ns, stamp_ns, bgr8 array)
  read_raw         every message as CDR bytes, for the player (which publishes them undecoded)
  bag_info         topics, types, counts, start/end/duration
  BagFrameSource   a bag's image topic as a frame source shaped like frame_source.OpenCvSource (camera node)
  Pacer            maps bag time to wall-clock deadlines at a playback rate (the player's pure core)

Time: a frame's header stamp and its bag (receive) timestamp are both `time_origin + media time`, where the
media time of frame i is i / fps (the convention of test/data/*labels.yaml). With the default origin 0
the stamps ARE media time, so replay results line up with labelled spans without any offset.

Format: rosbag2 metadata version 9 (what Jazzy's rosbag2 writes and reads) with type description hashes
from rosbags' Jazzy type store (equal to the RIHS01 hashes in the ros-jazzy sensor_msgs wheel). MCAP is
the default storage (Jazzy's default plugin); sqlite3 for older tools.
"""
from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np

from .compressed import encode_compressed, message_to_bgr
from .image_codec import ImageFormatError

IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED = 'sensor_msgs/msg/CompressedImage'
IMAGE_TYPES = (IMAGE, COMPRESSED)
STORAGES = ('mcap', 'sqlite3')
BAG_VERSION = 9
DEFAULT_TOPIC = {False: '/image_raw', True: '/image_raw/compressed'}   # image_transport's naming
NS = 1_000_000_000


class BagError(RuntimeError):
    """A bag cannot be written or read as asked: the message says what and why."""


def _typestore():
    from rosbags.typesys import Stores, get_typestore
    return get_typestore(Stores.ROS2_JAZZY)


def normalise_topic(topic: str) -> str:
    """Bags store fully qualified names (ros2 bag record does): 'image_raw' -> '/image_raw'."""
    name = topic.strip()
    if not name or name == '/' or name.endswith('/') or '//' in name:
        raise BagError(f'invalid topic name {topic!r}')
    allowed = set('abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_/~{}')
    if not set(name) <= allowed or name.lstrip('/')[0].isdigit():
        raise BagError(f'invalid topic name {topic!r}: letters, digits, _ and / only, not starting with a digit')
    return name if name.startswith('/') else '/' + name


# -- writing ------------------------------------------------------------------------------------------------
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

    store = _typestore()
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


# -- reading ------------------------------------------------------------------------------------------------
def _open_reader(path: str):
    from rosbags.rosbag2 import Reader
    from rosbags.rosbag2.errors import ReaderError
    try:
        reader = Reader(path)
        reader.open()
    except FileNotFoundError as err:
        raise BagError(f'not a rosbag2 bag: {path} ({err})') from err
    except ReaderError as err:
        raise BagError(f'cannot read bag {path}: {err}') from err
    return reader


class BagFrame(NamedTuple):
    topic: str
    bag_time_ns: int
    stamp_ns: int            # header stamp, integer nanoseconds
    image: np.ndarray        # bgr8 HxWx3

    @property
    def stamp_s(self) -> float:
        return self.stamp_ns / NS


class RawMessage(NamedTuple):
    topic: str
    msgtype: str
    bag_time_ns: int
    data: bytes              # CDR with its 4-byte encapsulation header, as rclpy publishes raw bytes


def _select(reader, topics: Iterable[str] | None, types: tuple[str, ...] | None, path: str) -> list:
    """The connections of `topics` (all, or all of `types`, when None), refusing unknown or wrong-typed ones."""
    conns = reader.connections
    present = {c.topic: c.msgtype for c in conns}
    if topics is None:
        chosen = [c for c in conns if types is None or c.msgtype in types]
        if not chosen:
            raise BagError(f'{path} has no {" / ".join(types or ())} topics; it has: '
                           + (', '.join(f'{t} ({m})' for t, m in sorted(present.items())) or 'none'))
        return chosen
    wanted = {normalise_topic(t) for t in topics}
    missing = sorted(wanted - present.keys())
    if missing:
        raise BagError(f'{path} has no topic {", ".join(missing)}; it has: '
                       + (', '.join(f'{t} ({m})' for t, m in sorted(present.items())) or 'none'))
    if types is not None:
        wrong = sorted(t for t in wanted if present[t] not in types)
        if wrong:
            raise BagError(f'{path}: topic {", ".join(f"{t} is {present[t]}" for t in wrong)}; expected '
                           + ' or '.join(types))
    return [c for c in conns if c.topic in wanted]


def _image_messages(path: str, topics: Iterable[str] | None) -> Iterator[tuple[str, int, int, object]]:
    """(topic, bag_time_ns, message number on its topic, deserialised message) of the image topics."""
    store = _typestore()
    reader = _open_reader(path)
    try:
        conns = _select(reader, topics, IMAGE_TYPES, path)
        counts: dict[str, int] = {}
        for conn, bag_time, raw in reader.messages(connections=conns):
            n = counts[conn.topic] = counts.get(conn.topic, 0) + 1
            try:
                msg = store.deserialize_cdr(raw, conn.msgtype)
            except Exception as err:  # malformed CDR: rosbags raises assorted errors
                raise BagError(f'{path}: {conn.topic} message {n} does not deserialise as {conn.msgtype}: '
                               f'{err}') from err
            yield conn.topic, bag_time, n, msg
    finally:
        reader.close()


def _decode(path: str, topic: str, bag_time: int, n: int, msg) -> BagFrame:
    try:
        image = message_to_bgr(msg)
    except ImageFormatError as err:
        raise ImageFormatError(f'{path}: {topic} message {n} (bag time {bag_time} ns): {err}') from err
    stamp = msg.header.stamp
    return BagFrame(topic, bag_time, stamp.sec * NS + stamp.nanosec, image)


def read_frames(path: str, topics: Iterable[str] | None = None) -> Iterator[BagFrame]:
    """Decoded frames of the bag's Image / CompressedImage topics (all of them, or `topics`), in bag-time
    order. ImageFormatError (a ValueError) names the topic and message when a frame cannot be decoded."""
    for topic, bag_time, n, msg in _image_messages(path, topics):
        yield _decode(path, topic, bag_time, n, msg)


def read_raw(path: str, topics: Iterable[str] | None = None) -> Iterator[RawMessage]:
    """Every message (of `topics`) as undecoded CDR bytes, in bag-time order."""
    reader = _open_reader(path)
    try:
        for conn, bag_time, raw in reader.messages(connections=_select(reader, topics, None, path)):
            yield RawMessage(conn.topic, conn.msgtype, bag_time, bytes(raw))
    finally:
        reader.close()


def is_bag_path(uri: str) -> bool:
    """A rosbag2 directory (has metadata.yaml) or a bare .mcap / .db3 storage file."""
    p = Path(uri)
    return (p.is_dir() and (p / 'metadata.yaml').is_file()) or (p.is_file() and p.suffix in ('.mcap', '.db3'))


class BagFrameSource:
    """A bag's image topic as a frame source, duck-typed like frame_source.OpenCvSource (open / read / close,
    fps, kind, is_live, display_uri), so the camera node can take a bag path wherever it takes a video file,
    lock-step included. Media time is the frame's header stamp: bag replay is stamped with capture time.
    """

    kind = 'file'
    is_live = False

    def __init__(self, uri: str, topic: str | None = None, loop: bool = False):
        self.uri = uri
        self.topic = topic
        self.loop = loop
        self.loops = 0
        self.fps = 0.0
        self._messages: Iterator | None = None
        self._index = 0
        self._good_in_pass = 0
        self.bad_frames = 0                    # undecodable frames skipped (a corrupt message must not end a replay)
        self.last_error: str | None = None

    @property
    def display_uri(self) -> str:
        return self.uri + (f' [{self.topic}]' if self.topic else '')

    def open(self) -> None:
        from .frame_source import SourceError
        try:
            info = bag_info(self.uri)
            topics = [t for t in info.topics if t.msgtype in IMAGE_TYPES]
            if self.topic is None and len(topics) > 1:
                raise BagError(f'{self.uri} has {len(topics)} image topics ({", ".join(t.name for t in topics)}); '
                               f'choose one')
            chosen = [t for t in topics if self.topic is None or t.name == normalise_topic(self.topic)]
            if not chosen:
                list(read_frames(self.uri, [self.topic] if self.topic else None))   # raises the precise error
            count = chosen[0].count
        except BagError as err:
            raise SourceError(str(err)) from err
        # The average rate, for pacing a realtime replay; exact stamps travel with every frame anyway.
        self.fps = (count - 1) / (info.duration_ns / NS) if count > 1 and info.duration_ns > 0 else 30.0
        self.topic = chosen[0].name
        self._messages = _image_messages(self.uri, [self.topic])
        self._index = 0
        self._good_in_pass = 0

    def read(self) -> tuple[np.ndarray | None, int, float | None]:
        """(bgr8 image, index, header stamp in seconds); (None, index, None) at the end of the bag."""
        from .frame_source import SourceError
        if self._messages is None:
            raise SourceError('source not open')
        while True:
            try:
                item = next(self._messages, None)
            except BagError as err:   # a message that is not even valid CDR: the bag is damaged
                raise SourceError(str(err)) from err
            if item is None and self.loop and self._good_in_pass:
                self.loops += 1
                self._good_in_pass = 0   # a pass with no decodable frame ends the loop instead of spinning
                self._messages = _image_messages(self.uri, [self.topic])
                continue
            if item is None:
                return None, self._index, None
            try:
                frame = _decode(self.uri, *item)
                break
            except ImageFormatError as err:
                self.bad_frames += 1
                self.last_error = str(err)
        self._good_in_pass += 1
        index = self._index
        self._index += 1
        return frame.image, index, frame.stamp_s

    def close(self) -> None:
        if self._messages is not None:
            self._messages.close()   # runs the generator's finally: closes the bag reader
        self._messages = None


# -- info ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TopicInfo:
    name: str
    msgtype: str
    count: int


@dataclass(frozen=True)
class BagInfo:
    path: str
    storage: str
    start_ns: int
    end_ns: int
    message_count: int
    topics: list[TopicInfo] = field(default_factory=list)
    size_bytes: int = 0

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)

    def as_dict(self) -> dict:
        return {'path': self.path, 'storage': self.storage, 'start_s': self.start_ns / NS,
                'end_s': self.end_ns / NS, 'duration_s': self.duration_ns / NS,
                'message_count': self.message_count, 'size_bytes': self.size_bytes,
                'topics': [{'name': t.name, 'type': t.msgtype, 'count': t.count} for t in self.topics]}


def _storage_of(path: Path) -> str:
    import yaml
    meta = path / 'metadata.yaml'
    if meta.is_file():
        with open(meta, encoding='utf-8') as f:
            info = (yaml.safe_load(f) or {}).get('rosbag2_bagfile_information', {})
        if info.get('storage_identifier'):
            return str(info['storage_identifier'])
    suffix = path.suffix if path.is_file() else ''
    return {'.mcap': 'mcap', '.db3': 'sqlite3'}.get(suffix, 'unknown')


def bag_info(path: str) -> BagInfo:
    reader = _open_reader(path)
    try:
        count = reader.message_count
        topics = sorted((TopicInfo(name, t.msgtype or 'mixed', t.msgcount) for name, t in reader.topics.items()),
                        key=lambda t: t.name)
        # rosbags' end_time is exclusive (last message + 1 ns); report the last message's time, as ros2 bag info does.
        start, end = (reader.start_time, reader.end_time - 1) if count else (0, 0)
    finally:
        reader.close()
    p = Path(path)
    size = sum(f.stat().st_size for f in p.rglob('*') if f.is_file()) if p.is_dir() else os.path.getsize(p)
    return BagInfo(str(path), _storage_of(p), start, end, count, topics, size)


def format_info(info: BagInfo) -> str:
    lines = [f'Bag:       {info.path}',
             f'Storage:   {info.storage} ({info.size_bytes / 1e6:.2f} MB)',
             f'Duration:  {info.duration_ns / NS:.3f} s',
             f'Start:     {info.start_ns / NS:.3f} s',
             f'End:       {info.end_ns / NS:.3f} s',
             f'Messages:  {info.message_count}',
             'Topics:']
    width = max((len(t.name) for t in info.topics), default=0)
    lines += [f'  {t.name:<{width}}  {t.msgtype}  count={t.count}' for t in info.topics]
    return '\n'.join(lines)


# -- pacing -------------------------------------------------------------------------------------------------
class Pacer:
    """Maps bag time to wall-clock deadlines at `rate` (2.0 = twice as fast; 0 = as fast as possible).

    Anchored at the first message of each pass (`restart`), so looping and late starts never make the player
    race to catch up with time that passed before it began.
    """

    def __init__(self, rate: float = 1.0):
        if not (rate >= 0 and math.isfinite(rate)):
            raise ValueError(f'rate must be a finite number >= 0 (0 = as fast as possible), got {rate}')
        self.rate = rate
        self._bag0: int | None = None
        self._wall0 = 0.0

    def restart(self, bag_time_ns: int, wall_s: float) -> None:
        self._bag0, self._wall0 = bag_time_ns, wall_s

    def deadline(self, bag_time_ns: int, wall_s: float) -> float:
        """Wall time at which the message stamped `bag_time_ns` is due (anchoring on the first call)."""
        if self._bag0 is None:
            self.restart(bag_time_ns, wall_s)
        if self.rate == 0:
            return wall_s
        return self._wall0 + (bag_time_ns - self._bag0) / NS / self.rate

    def bag_time_at(self, wall_s: float) -> int | None:
        """Playback (bag) time at wall time `wall_s`, for /clock; None before the first message."""
        if self._bag0 is None:
            return None
        if self.rate == 0:
            return self._bag0
        return self._bag0 + int(round((wall_s - self._wall0) * self.rate * NS))
