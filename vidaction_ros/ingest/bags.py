"""Reading rosbag2 bags of camera frames on the pure-Python `rosbags` library: no rclpy, no rosbag2 install.

  read_frames      a bag's Image / CompressedImage topics -> (topic, bag_time_ns, stamp_ns, bgr8 array)
  read_raw         every message as CDR bytes, for the player (which publishes them undecoded)
  bag_info         topics, types, counts, start/end/duration
  BagFrameSource   a bag's image topic as a frame source shaped like frame_source.OpenCvSource (camera node)

Writing bags from a video is vidaction_ros.tools.bag_writer; pacing playback is vidaction_ros.tools.bag_pacer.

Time: a frame's header stamp and its bag (receive) timestamp are both `time_origin + media time`, where the
media time of frame i is i / fps (the convention of test/data/*labels.yaml). With the default origin 0
the stamps ARE media time, so replay results line up with labelled spans without any offset.

Format: rosbag2 metadata version 9 (what Jazzy's rosbag2 writes and reads) with type description hashes
from rosbags' Jazzy type store (equal to the RIHS01 hashes in the ros-jazzy sensor_msgs wheel). MCAP is
the default storage (Jazzy's default plugin); sqlite3 for older tools.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np

from .compressed import message_to_bgr
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


def jazzy_typestore():
    """The rosbags type store of ROS 2 Jazzy (its hashes equal the ros-jazzy wheels' RIHS01 hashes)."""
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
    store = jazzy_typestore()
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
