"""Frames across processes through Eclipse iceoryx2: loaned shared-memory samples, woken by an event.

The camera loans a sample of the working-size frame (`IoxFramePublisher.loan`), resizes into it, and sends
it with a fixed header (`FrameHeader`: sequence, stamps, shape, encoding, frame id, source size, gate
score) and an event notification. A consumer (`IoxFrameReader`) is woken by the event, takes the newest
sample and views the pixels in place until it releases the sample. iceoryx2 never hands a loaned or
borrowed sample to the writer again, so a frame being read cannot be overwritten: no seqlock, no torn
frame, nothing "lost while reading". Older frames a slow consumer never took are dropped by iceoryx2 (its
buffer overflows onto the oldest) and counted here from the sequence gaps.

What iceoryx2 does for us: shared-memory segments (0600), the publisher's sample pool and its accounting,
the subscriber queues (newest wins), the wake-up event, and the removal of a SIGKILLed process's resources
(`reclaim_dead_nodes`, run whenever a port is created). What this module adds: the header layout, the
service names, numpy views of the samples, and one clear error for a peer with another layout.

Pure core: numpy, ctypes and iceoryx2 (>= 0.10, < 0.11); no ROS import.
"""
from __future__ import annotations

import atexit
import collections
import ctypes
import functools
import gc
import os
import struct
import threading

import numpy as np

try:
    import iceoryx2 as iox
except ImportError:          # pragma: no cover - a build without the library: transport image
    iox = None

REQUIRED = 'iceoryx2 >= 0.10, < 0.11'
CHANNELS = {'bgr8': 3, 'rgb8': 3, 'mono8': 1}
OBSERVER_KEEP = 4          # samples an observer (overlay, escalation) keeps borrowed: ~130 ms at 30 Hz
MAX_SUBSCRIBERS = 16       # consumers and observers of one camera


class IoxUnavailable(RuntimeError):
    """iceoryx2 is missing, or its service could not be created or opened; the reason is in the message."""


class IncompatibleFrames(IoxUnavailable):
    """The service exists with another layout (a peer from another build) or another configuration."""


class FrameHeaderV2(ctypes.Structure):
    """Travels in each sample's user header. The class name is part of the service's type check: change the
    fields, change the name (V3), and a peer of the other build gets IncompatibleFrames, never a misread.
    memory: where the pixels are. MEMORY_HOST: in the sample itself. MEMORY_CUDA: in a device buffer of the
    camera's (cuda_frames); the sample carries that buffer's CUDA IPC handle, and holding the sample keeps the
    camera from writing that buffer (one buffer per sample of the pool)."""
    _fields_ = [
        ('sequence', ctypes.c_uint64),
        ('stamp_ns', ctypes.c_int64),           # capture time (media time in replay)
        ('captured_ns', ctypes.c_int64),        # stage times, wall clock
        ('published_ns', ctypes.c_int64),
        ('height', ctypes.c_uint32),
        ('width', ctypes.c_uint32),
        ('channels', ctypes.c_uint32),
        ('source_width', ctypes.c_uint32),
        ('source_height', ctypes.c_uint32),
        ('scene_change', ctypes.c_float),
        ('keyframe', ctypes.c_uint8),
        ('memory', ctypes.c_uint8),
        ('encoding', ctypes.c_char * 14),
        ('frame_id', ctypes.c_char * 64),
    ]


FrameHeader = FrameHeaderV2
MEMORY_HOST, MEMORY_CUDA = 0, 1
HEADER_FIELDS = tuple(name for name, _ in FrameHeader._fields_)
# The consumer reads the header with one unpack (measured cold, after a 33 ms idle: ~150 us through the ctypes
# fields, one call this way); the layout is checked against the ctypes one at import.
_HEADER = struct.Struct('<QqqqIIIIIfBB14s64s')
assert _HEADER.size == ctypes.sizeof(FrameHeader) and FrameHeader.frame_id.offset == 72, 'header layouts differ'


def available() -> bool:
    return iox is not None


def service_exists(name: str) -> bool:
    """Whether a camera (or anyone) made this frame service: a look at iceoryx2's files, no node, no ports.
    Consumers wait for it before they open a reader, so a pipeline on another transport holds nothing of
    iceoryx2's. Any failure reads as "not there"."""
    if iox is None:
        return False
    _quiet()
    try:
        return bool(iox.Service.does_exist(iox.ServiceName.new(name), iox.config.global_config(),
                                           iox.MessagingPattern.PublishSubscribe, iox.ServiceType.Ipc))
    except Exception:   # noqa: BLE001 - e.g. an unreadable iceoryx2 directory: no iceoryx2 frames then
        return False


def service_name(topic: str, domain: str | int = '') -> str:
    """One service per camera topic and ROS domain: vidaction/<domain>/<resolved topic>."""
    domain = str(domain if domain != '' else os.environ.get('ROS_DOMAIN_ID', '0'))
    return f'vidaction/d{domain}/{topic.strip("/")}'


_NODE = None
_NODE_LOCK = threading.Lock()


@functools.cache
def _quiet() -> None:
    """iceoryx2 announces "No config file was loaded" at Info on every start: quiet unless IOX2_LOG_LEVEL asks
    otherwise (once per process: cached)."""
    iox.set_log_level_from_env_or(iox.LogLevel.Error)


def _node():
    """One iceoryx2 node per process (ports keep it alive). Its signal handling is off: the process's own
    stop handling (nodes/process_stop.py) owns SIGINT and SIGTERM."""
    global _NODE
    if iox is None:
        raise IoxUnavailable(f'the iceoryx2 package is not installed ({REQUIRED}); use transport image')
    with _NODE_LOCK:
        if _NODE is None:
            _quiet()
            _NODE = _created('iceoryx2 node', lambda: iox.NodeBuilder.new()
                             .signal_handling_mode(iox.SignalHandlingMode.Disabled).create(iox.ServiceType.Ipc))
        return _NODE


def _created(what: str, build, hint: str = ''):
    """build(), any iceoryx2 failure (its own error classes, an OSError from a full /dev/shm) raised as one
    IoxUnavailable naming what could not be created."""
    try:
        return build()
    except Exception as err:    # noqa: BLE001 - iceoryx2 raises its own error classes
        raise IoxUnavailable(f'{what}: {type(err).__name__}: {err}{hint}') from None


@atexit.register
def release_node() -> None:
    """Drop this process's node once its ports are closed, so its files go with it: node processes end with
    os._exit after atexit (nodes/runtime.exit_process), which would skip iceoryx2's own clean-up."""
    global _NODE
    with _NODE_LOCK:
        _NODE = None
    gc.collect()


def reclaim_dead_nodes() -> None:
    """Remove what SIGKILLed processes left (their node, ports and segments): the next start never blocks
    on them. Cheap when nothing died."""
    node = _node()
    try:
        node.try_cleanup_dead_nodes()
    except Exception:   # noqa: BLE001 - best effort: a node of another user is skipped by iceoryx2 itself
        pass


def _services(name: str):
    """The frame service and its wake-up event, created by whichever side comes first."""
    node = _node()
    reclaim_dead_nodes()
    try:
        frames = (node.service_builder(iox.ServiceName.new(name))
                  .publish_subscribe(iox.Slice[ctypes.c_uint8]).user_header(FrameHeader)
                  .max_publishers(1).max_subscribers(MAX_SUBSCRIBERS)
                  .subscriber_max_buffer_size(OBSERVER_KEEP)
                  # + 1: the sample being received while `keep` are held (and a consumer's taken frame)
                  .subscriber_max_borrowed_samples(OBSERVER_KEEP + 1)
                  .history_size(0).enable_safe_overflow(True)
                  .open_or_create())
    except Exception as err:    # noqa: BLE001 - iceoryx2 raises its own error classes; say what they mean
        text = f'{type(err).__name__}: {err}'
        if 'Incompatible' in text or 'DoesNotSupport' in text:
            raise IncompatibleFrames(
                f'frame service {name!r} exists with another layout or configuration ({text}): a camera or '
                f'consumer from another vidaction_ros build is running; stop it, or give this pipeline '
                f'another ROS_DOMAIN_ID') from None
        raise IoxUnavailable(f'frame service {name!r}: {text}') from None
    ready = _created(f'frame event {name!r}/ready',
                     lambda: node.service_builder(iox.ServiceName.new(name + '/ready')).event().open_or_create())
    return frames, ready


def _pixels(sample, height: int, width: int, channels: int, writable: bool) -> np.ndarray:
    """The sample's payload as an HxW(xC) uint8 array over the shared memory itself (no copy); ValueError
    when the sample's size disagrees with the shape its header gives."""
    shape = (height, width) if channels == 1 else (height, width, channels)
    size = height * width * channels
    if sample.header.number_of_elements != size:
        raise ValueError(f'frame sample of {sample.header.number_of_elements} bytes but its header says {shape}')
    array = np.frombuffer((ctypes.c_uint8 * size).from_address(sample.payload_ptr), np.uint8).reshape(shape)
    array.flags.writeable = writable
    return array


class Loan:
    """A loaned sample: fill `array` (HxWxC uint8, the shared memory itself; for a CUDA frame the control
    bytes), then publisher.send(loan). `address`: where the sample's payload is in this process, the same for
    every loan of the same pool chunk (cuda_frames keys its device buffers by it)."""
    __slots__ = ('sample', 'header', 'array', 'address')

    def __init__(self, sample, header, array):
        self.sample, self.header, self.array = sample, header, array
        self.address = sample.payload_ptr


class IoxFramePublisher:
    """The camera's side. max_bytes: the largest frame expected (a larger one grows the pool, power of two)."""

    def __init__(self, name: str, max_bytes: int):
        self.name = name
        self.frames, self.ready = _services(name)
        self.publisher = _created(f'frame publisher on {name!r}', lambda: (
            self.frames.publisher_builder().initial_max_slice_len(int(max_bytes))
            .allocation_strategy(iox.AllocationStrategy.PowerOfTwo).max_loaned_samples(2).create()),
            ' (is another camera publishing this topic in this ROS domain?)')
        self.notifier = _created(f'frame notifier on {name!r}', lambda: self.ready.notifier_builder().create())
        self.counts = {'sent': 0, 'abandoned': 0}

    def subscribers(self) -> int:
        return int(self.frames.dynamic_config.number_of_subscribers)

    def loan(self, height: int, width: int, encoding: str = 'bgr8') -> Loan:
        sample, header, channels = self._loan(height, width, encoding, MEMORY_HOST, None)
        return Loan(sample, header, _pixels(sample, int(height), int(width), channels, writable=True))

    def loan_control(self, height: int, width: int, nbytes: int, encoding: str = 'bgr8') -> Loan:
        """A sample for a frame held elsewhere (MEMORY_CUDA): `array` is nbytes of control data to fill."""
        sample, header, _ = self._loan(height, width, encoding, MEMORY_CUDA, int(nbytes))
        array = np.frombuffer((ctypes.c_uint8 * nbytes).from_address(sample.payload_ptr), np.uint8)
        return Loan(sample, header, array)

    def _loan(self, height: int, width: int, encoding: str, memory: int, nbytes: int | None):
        """(sample, its header with the frame's shape and memory set, channels); nbytes: the payload, by
        default the pixels themselves."""
        channels = CHANNELS.get(encoding)
        if channels is None:
            raise ValueError(f'encoding {encoding!r} cannot travel as a frame sample; use one of {sorted(CHANNELS)}')
        sample = self.publisher.loan_slice_uninit(int(height) * int(width) * channels if nbytes is None else nbytes)
        header = sample.user_header().contents
        header.height, header.width, header.channels, header.encoding = height, width, channels, encoding.encode()
        header.memory = memory
        return sample, header, channels

    def send(self, loan: Loan, **fields) -> None:
        """Publish a filled loan; fields: any of HEADER_FIELDS (sequence, stamp_ns, ...)."""
        header = loan.header
        for key, value in fields.items():
            setattr(header, key, value.encode()[:63] if isinstance(value, str) else value)
        loan.array.flags.writeable = False
        loan.array = None
        loan.sample.assume_init().send()
        self.notifier.notify()
        self.counts['sent'] += 1

    def abandon(self, loan: Loan) -> None:
        loan.array.flags.writeable = False   # the producer's view must not write into a sample back in the pool
        loan.array = None
        loan.sample.delete()                 # back to the pool, never sent
        self.counts['abandoned'] += 1

    def close(self) -> None:
        for port in (self.notifier, self.publisher):
            port.delete()
        self.frames = self.ready = None      # the services close with their last user: segments removed


class Received:
    """A frame held in shared memory: `array` (read-only view) and the header's fields as attributes. Valid
    until release(); the writer cannot reuse the sample before that. A MEMORY_CUDA frame has no `array`; its
    `control` bytes name the device buffer (cuda_frames.DeviceFrames maps them)."""
    __slots__ = ('_sample', 'array', 'control') + HEADER_FIELDS

    def __init__(self, sample):
        self._sample = sample
        values = _HEADER.unpack(ctypes.string_at(sample.user_header_ptr, _HEADER.size))
        for name, value in zip(HEADER_FIELDS, values):
            setattr(self, name, value)
        self.encoding = self.encoding.split(b'\0', 1)[0].decode(errors='replace')
        self.frame_id = self.frame_id.split(b'\0', 1)[0].decode(errors='replace')
        if self.memory == MEMORY_CUDA:
            self.array = None
            self.control = ctypes.string_at(sample.payload_ptr, sample.header.number_of_elements)
        else:
            self.control = None
            self.array = _pixels(sample, self.height, self.width, self.channels, writable=False)

    def release(self) -> None:
        if self._sample is not None:
            self.array = None
            self._sample.delete()
            self._sample = None


class IoxFrameReader:
    """A consumer: wait() for the wake-up, take_newest() the newest frame (older ones released and counted).
    keep > 1 (observers): the last `keep` frames stay borrowed and can be looked up by sequence (find)."""

    def __init__(self, name: str, keep: int = 1):
        if not 1 <= keep <= OBSERVER_KEEP:
            raise ValueError(f'keep must be 1..{OBSERVER_KEEP}, got {keep}')
        self.name = name
        self.keep = keep
        self.frames, self.ready = _services(name)
        self.subscriber = _created(f'frame subscriber on {name!r}',
                                   lambda: self.frames.subscriber_builder().buffer_size(keep).create())
        self.listener = _created(f'frame listener on {name!r}', lambda: self.ready.listener_builder().create())
        self.held: collections.deque[Received] = collections.deque()
        self.last_sequence: int | None = None
        self.first_sequence: int | None = None      # of the first frame received; drops are counted from it
        self.counts = {'received': 0, 'dropped': 0, 'malformed': 0}
        self._closing = threading.Lock()

    def wait(self, timeout_s: float) -> bool:
        """Block (GIL released) until the camera announces a frame or timeout_s passes."""
        return bool(self.listener.timed_wait(iox.Duration.from_secs_f64(max(0.0, timeout_s))))

    def _receive_all(self) -> None:
        while (sample := self.subscriber.receive()) is not None:
            try:
                frame = Received(sample)
            except ValueError:
                sample.delete()
                self.counts['malformed'] += 1
                continue
            if self.last_sequence is None:
                # Frames before the first one received are not counted: a consumer may join a running camera.
                self.first_sequence = frame.sequence
            elif frame.sequence > self.last_sequence + 1:
                self.counts['dropped'] += frame.sequence - self.last_sequence - 1
            self.last_sequence = frame.sequence
            self.counts['received'] += 1
            self.held.append(frame)
            while len(self.held) > self.keep:
                self.held.popleft().release()
                if self.keep == 1:
                    self.counts['dropped'] += 1        # a consumer's frame superseded before it was taken

    def take_newest(self) -> Received | None:
        """The newest frame not taken before (the caller releases it), or None. Frames received but
        superseded before anyone took them are released and counted as dropped."""
        self._receive_all()
        if not self.held:
            return None
        newest = self.held.pop()
        while self.held:
            self.held.popleft().release()
            self.counts['dropped'] += 1
        return newest

    def find(self, sequence: int) -> Received | None:
        """The held frame with this sequence (observers; stays owned by the reader), or None."""
        self._receive_all()
        for frame in self.held:
            if frame.sequence == sequence:
                return frame
        return None

    def close(self) -> None:
        """Release held frames and the ports (idempotent: the consumer's thread and its destroy() may both)."""
        with self._closing:
            if self.frames is None:
                return
            while self.held:
                self.held.popleft().release()
            for port in (self.listener, self.subscriber):
                port.delete()
            self.frames = self.ready = None      # the services close with their last user: segments removed
