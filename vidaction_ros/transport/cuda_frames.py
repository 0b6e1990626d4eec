"""Frames on the GPU shared between processes: CUDA IPC device buffers behind a shared-memory control ring.

A CUDA frame ring is `slots` device buffers, each big enough for the camera's largest frame, allocated and
shared once (CUDA IPC through vidaction_ros.transport.cuda_ipc), plus a small POSIX shared-memory ring
(vidaction_ros.transport.shm_ring) whose slot i holds buffer i's IPC handle and the shape of the frame in it.
The control ring brings what the host ring has: a generation counter and a seqlock per slot (a reader learns that a slot
was overwritten under it), owner-only permissions, the stale segment of a SIGKILLed camera reclaimed, the
doorbell. The pixels never leave the GPU: the writer copies a host frame up once (or a device frame across,
device to device), and a reader in another process maps the same device memory: no host round trip.

GPU work is asynchronous: a reader's kernels may still be reading a slot after its Python code has moved on,
so view() and read() synchronise the reader's stream before they check the seqlock; only then does "not
overwritten" hold. The writer synchronises its stream before committing, so a committed slot is complete
for every stream of every process.

Lifetime: the buffers live as long as the writer. A reader maps each slot once (cached by handle) and never
touches a dead writer's mapping again: the control ring reports WriterGone first (and a restarted camera's
new handles replace the cached ones). torch's IPC reference counting assumes one consumer per share(); the
writer keeps its buffers until close(), so that count never frees memory a reader still maps while the
camera runs.

No ROS import: this runs, and its test runs, on a GPU machine with torch but without ROS. Without torch or
CUDA, constructing either end raises RuntimeError saying so.
"""
from __future__ import annotations

import struct
import warnings
from contextlib import contextmanager

import numpy as np

from . import cuda_ipc
from .frame_store import FrameLost
from .shm_ring import ShmRingReader, ShmRingWriter

PAYLOAD_BYTES = 4096                          # per control slot: header + one IPC handle (~0.7 KB)
_HEAD = struct.Struct('<4sIIII')              # magic, height, width, channels, handle length
_MAGIC = b'VCF1'


def _check_frame(frame, torch):
    """(source tensor, (h, w, c)) of a bgr8 HxWx3 uint8 frame: numpy on the host or a torch tensor."""
    if isinstance(frame, np.ndarray):
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f'CUDA frame ring holds HxWx3 uint8 (bgr8) frames, got {frame.dtype} {frame.shape}')
        with warnings.catch_warnings():       # read-only arrays (published frames): torch only reads them
            warnings.simplefilter('ignore', UserWarning)
            source = torch.from_numpy(np.ascontiguousarray(frame))
    elif isinstance(frame, torch.Tensor):
        if frame.dtype != torch.uint8 or frame.dim() != 3 or frame.shape[2] != 3:
            raise ValueError(f'CUDA frame ring holds HxWx3 uint8 (bgr8) frames, got {frame.dtype} '
                             f'{tuple(frame.shape)}')
        source = frame
    else:
        raise ValueError(f'frame must be a numpy array or a torch tensor, got {type(frame).__name__}')
    h, w, c = (int(v) for v in source.shape)
    return source, (h, w, c)


class CudaFrameWriter:
    """The camera's end. write(frame) -> (slot, generation) for the FrameRef, like ShmRingWriter.write."""

    def __init__(self, name: str, slots: int = 4, max_bytes: int = 640 * 480 * 3, device: str = ''):
        torch = cuda_ipc._require_cuda()
        self._torch = torch
        self.device = torch.device(device) if device else torch.device('cuda', torch.cuda.current_device())
        if self.device.type != 'cuda':
            raise ValueError(f'CUDA frame ring needs a cuda device, got {self.device}')
        self.max_bytes = int(max_bytes)
        self.buffers = [torch.empty(self.max_bytes, dtype=torch.uint8, device=self.device) for _ in range(slots)]
        torch.cuda.synchronize(self.device)
        self.handles = [cuda_ipc.share(buffer) for buffer in self.buffers]
        longest = max(len(handle) for handle in self.handles)
        if _HEAD.size + longest > PAYLOAD_BYTES:
            raise RuntimeError(f'CUDA IPC handle of {longest} bytes does not fit a {PAYLOAD_BYTES}-byte control slot')
        self.ring = ShmRingWriter(name, slots=slots, slot_bytes=PAYLOAD_BYTES)
        self.name = self.ring.name

    def write(self, frame) -> tuple[int, int]:
        torch = self._torch
        source, (h, w, c) = _check_frame(frame, torch)
        nbytes = h * w * c
        if nbytes > self.max_bytes:
            raise ValueError(f'frame {w}x{h}x{c} is {nbytes} bytes, larger than the {self.max_bytes}-byte device '
                             f'slots of CUDA frame ring {self.name!r}; create it for the largest frame')
        loan = self.ring.loan((1, PAYLOAD_BYTES))     # readers of this slot are told it is gone from here on
        try:
            self.buffers[loan.slot][:nbytes].view(h, w, c).copy_(source)
            torch.cuda.current_stream(self.device).synchronize()    # complete for every stream, every process
            handle = self.handles[loan.slot]
            payload = loan.array[0]
            payload[:_HEAD.size] = np.frombuffer(_HEAD.pack(_MAGIC, h, w, c, len(handle)), np.uint8)
            payload[_HEAD.size:_HEAD.size + len(handle)] = np.frombuffer(handle, np.uint8)
        except BaseException:
            self.ring.abandon(loan)
            raise
        return self.ring.commit(loan)

    def set_doorbell(self, path: str) -> None:
        self.ring.set_doorbell(path)

    def close(self) -> None:
        self.ring.close()          # readers see WriterGone before they could touch the buffers again
        self.buffers = []

    @property
    def closed(self) -> bool:
        return self.ring.closed


class CudaFrameReader:
    """A consumer's end: view() (in place) and read() (a private device copy) of (slot, generation)."""

    def __init__(self, name: str):
        self._torch = cuda_ipc._require_cuda()
        self.ring = ShmRingReader(name)
        self.name = self.ring.name
        self.inode = self.ring.inode
        self._mapped: dict[int, tuple[bytes, object]] = {}    # slot -> (handle, flat device tensor)

    def is_open(self) -> bool:
        return self.ring.is_open()

    def writer_alive(self) -> bool:
        return self.ring.writer_alive()

    @property
    def lost(self) -> int:
        return self.ring.lost

    def _frame(self, slot: int, payload: np.ndarray):
        magic, h, w, c, length = _HEAD.unpack_from(payload[:_HEAD.size].tobytes())
        if magic != _MAGIC or _HEAD.size + length > PAYLOAD_BYTES:
            raise FrameLost(f'CUDA frame ring {self.name!r}: slot {slot} holds no frame handle')
        handle = payload[_HEAD.size:_HEAD.size + length].tobytes()
        mapped = self._mapped.get(slot)
        if mapped is None or mapped[0] != handle:
            try:
                flat = cuda_ipc.open_shared(handle)
            except (ValueError, RuntimeError) as err:
                raise FrameLost(f'CUDA frame ring {self.name!r}: slot {slot} cannot be mapped: {err}') from None
            self._mapped[slot] = mapped = (handle, flat)
        flat = mapped[1]
        if h * w * c > flat.numel():
            raise FrameLost(f'CUDA frame ring {self.name!r}: slot {slot} says {w}x{h}x{c}, larger than its buffer')
        return flat[:h * w * c].view(h, w, c)

    @contextmanager
    def view(self, slot: int, generation: int):
        """The frame in place on the GPU (HxWx3 uint8 tensor), validated when the block ends: FrameLost then
        means the camera overwrote it meanwhile and what the block computed from it must be discarded.
        The block's GPU work is waited for before that check. Do not keep the tensor past the block."""
        with self.ring.view(slot, generation) as payload:
            frame = self._frame(slot, payload[0])
            try:
                yield frame
            finally:
                self._torch.cuda.current_stream(frame.device).synchronize()

    def read(self, slot: int, generation: int):
        """A private copy of the frame on the same GPU (device to device), or FrameLost."""
        with self.view(slot, generation) as frame:
            out = frame.clone()
        return out

    def close(self) -> None:
        self._mapped.clear()
        self.ring.close()
