"""Frames on the GPU shared between processes: CUDA IPC device buffers named by iceoryx2 samples.

The camera keeps one device buffer per chunk of its iceoryx2 sample pool (keyed by the chunk's address, made
and shared by CUDA IPC the first time the pool lends that chunk: iceoryx2 reuses freed chunks first, so a
handful exist). To send a frame it loans a small control sample (iox_frames.IoxFramePublisher.loan_control),
copies the pixels into that chunk's device buffer (a host frame up once, a device frame device to device),
waits for the copy, and writes the buffer's IPC handle and the frame's shape into the sample. A consumer holds
the sample while it reads the buffer; iceoryx2 never lends a held chunk again, so the camera never writes a
buffer being read: no seqlock, no torn frame, nothing lost while reading, by construction (the same argument
as for host frames in iox_frames). A consumer maps each handle once (cached) and the pixels never leave the GPU.

GPU work is asynchronous: a consumer's kernels may still be reading after its Python code moved on, so
`DeviceFrames.view` synchronises the consumer's stream before the caller releases the sample. The writer
synchronises its stream before sending, so a sent frame is complete for every stream of every process.

Lifetime: the buffers live as long as the writer. torch's IPC reference counting assumes one consumer per
share(); the writer keeps its buffers until close(), so that count never frees memory a consumer still maps
while the camera runs.

No ROS import. CUDA is reached only through `Device` (torch + cuda_ipc), which tests without a GPU replace
with host tensors; without torch or CUDA the real one raises RuntimeError saying so.
"""
from __future__ import annotations

import collections
import struct
import warnings

import numpy as np

from . import cuda_ipc
from .frame_store import FrameLost

CONTROL_BYTES = 4096                          # per control sample: header + one IPC handle (~0.7 KB)
_HEAD = struct.Struct('<4sIIII')              # magic, height, width, channels, handle length
_MAGIC = b'VCF2'
MAX_MAPPED = 64                               # handles a consumer keeps mapped (a camera restart brings new ones)


class Device:
    """What the CUDA frames need from CUDA: buffers, IPC handles, stream synchronisation (torch + cuda_ipc)."""

    def __init__(self, device: str = ''):
        self.torch = torch = cuda_ipc._require_cuda()
        self.device = torch.device(device) if device else torch.device('cuda', torch.cuda.current_device())
        if self.device.type != 'cuda':
            raise ValueError(f'CUDA frames need a cuda device, got {self.device}')

    def empty(self, nbytes: int):
        buffer = self.torch.empty(nbytes, dtype=self.torch.uint8, device=self.device)
        self.torch.cuda.synchronize(self.device)
        return buffer

    def share(self, buffer) -> bytes:
        return cuda_ipc.share(buffer)

    def open(self, handle: bytes):
        return cuda_ipc.open_shared(handle)

    def synchronize(self, tensor) -> None:
        self.torch.cuda.current_stream(tensor.device).synchronize()


def _check_frame(frame, torch):
    """(source tensor, (h, w, c)) of a bgr8 HxWx3 uint8 frame: numpy on the host or a torch tensor."""
    if isinstance(frame, np.ndarray):
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f'CUDA frames are HxWx3 uint8 (bgr8), got {frame.dtype} {frame.shape}')
        with warnings.catch_warnings():       # read-only arrays (published frames): torch only reads them
            warnings.simplefilter('ignore', UserWarning)
            source = torch.from_numpy(np.ascontiguousarray(frame))
    elif isinstance(frame, torch.Tensor):
        if frame.dtype != torch.uint8 or frame.dim() != 3 or frame.shape[2] != 3:
            raise ValueError(f'CUDA frames are HxWx3 uint8 (bgr8), got {frame.dtype} {tuple(frame.shape)}')
        source = frame
    else:
        raise ValueError(f'frame must be a numpy array or a torch tensor, got {type(frame).__name__}')
    h, w, c = (int(v) for v in source.shape)
    return source, (h, w, c)


class CudaFrameWriter:
    """The camera's end: fill(loan, frame) puts the frame in the device buffer of the loan's pool chunk and the
    buffer's handle in the loan; the caller sends the loan."""

    def __init__(self, max_bytes: int, device: Device | None = None):
        self.device = device or Device()
        self.max_bytes = int(max_bytes)
        self.buffers: dict[int, tuple[object, bytes]] = {}     # pool chunk address -> (device buffer, handle)

    def _buffer(self, address: int):
        entry = self.buffers.get(address)
        if entry is None:
            buffer = self.device.empty(self.max_bytes)
            handle = self.device.share(buffer)
            if _HEAD.size + len(handle) > CONTROL_BYTES:
                raise RuntimeError(f'CUDA IPC handle of {len(handle)} bytes does not fit a {CONTROL_BYTES}-byte '
                                   f'control sample')
            entry = self.buffers[address] = (buffer, handle)
        return entry

    def fill(self, loan, frame) -> tuple[int, int, int]:
        """Copy frame into the buffer of loan's chunk, wait for the copy, write the handle into loan.array.
        Returns the frame's (h, w, c)."""
        source, (h, w, c) = _check_frame(frame, self.device.torch)
        nbytes = h * w * c
        if nbytes > self.max_bytes:
            raise ValueError(f'frame {w}x{h}x{c} is {nbytes} bytes, larger than the {self.max_bytes}-byte device '
                             f'buffers; give the camera max_width / max_height of its largest frame')
        buffer, handle = self._buffer(loan.address)
        buffer[:nbytes].view(h, w, c).copy_(source)
        self.device.synchronize(buffer)          # complete for every stream of every process before it is sent
        control = loan.array
        control[:_HEAD.size] = np.frombuffer(_HEAD.pack(_MAGIC, h, w, c, len(handle)), np.uint8)
        control[_HEAD.size:_HEAD.size + len(handle)] = np.frombuffer(handle, np.uint8)
        return h, w, c

    def close(self) -> None:
        self.buffers = {}


class DeviceFrames:
    """A consumer's end: the device tensor of a held control sample's frame, each handle mapped once."""

    def __init__(self, device: Device | None = None):
        self.device = device or Device()
        self._mapped: collections.OrderedDict[bytes, object] = collections.OrderedDict()

    def view(self, control: bytes, name: str = ''):
        """The HxWx3 uint8 tensor in place (valid while the sample is held; synchronise() before release)."""
        try:
            magic, h, w, c, length = _HEAD.unpack_from(control)
        except struct.error:
            magic = None
        if magic != _MAGIC or _HEAD.size + length > len(control):
            raise FrameLost(f'CUDA frame of {name!r}: the sample holds no frame handle')
        handle = control[_HEAD.size:_HEAD.size + length]
        flat = self._mapped.get(handle)
        if flat is None:
            try:
                flat = self.device.open(handle)
            except (ValueError, RuntimeError) as err:
                raise FrameLost(f'CUDA frame of {name!r} cannot be mapped: {err}') from None
            self._mapped[handle] = flat
            if len(self._mapped) > MAX_MAPPED:
                self._mapped.popitem(last=False)
        else:
            self._mapped.move_to_end(handle)
        if h * w * c > flat.numel():
            raise FrameLost(f'CUDA frame of {name!r} says {w}x{h}x{c}, larger than its buffer')
        return flat[:h * w * c].view(h, w, c)

    def synchronize(self, tensor) -> None:
        self.device.synchronize(tensor)

    def close(self) -> None:
        self._mapped.clear()


_FRAMES: DeviceFrames | None = None


def device_frames() -> DeviceFrames:
    """This process's consumer end (RuntimeError when it has no CUDA: the caller turns it into FrameLost)."""
    global _FRAMES
    if _FRAMES is None:
        _FRAMES = DeviceFrames()
    return _FRAMES
