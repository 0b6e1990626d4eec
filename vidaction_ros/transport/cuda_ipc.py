"""CUDA IPC for frames already on the GPU: another process opens the same device memory, no host round trip.

Small by design. It uses torch's own CUDA IPC protocol (what torch.multiprocessing does when it pickles a
CUDA tensor: `storage._share_cuda_()` in the producer, `rebuild_cuda_tensor` in the consumer, including
torch's producer-side reference counting), but the handle travels as a small self-describing byte string
(`share()` -> bytes -> `open_shared()`), not as a pickle, so a consumer never unpickles bytes from another
process. The bytes can ride anywhere: a shared-memory ring slot, a message field.

Contract (the same as torch.multiprocessing's):
  * the producer keeps the tensor alive, and its process running, while consumers use it;
  * each `share()` result is opened once, by one consumer (torch counts one reference per share);
  * producer and consumer run on the same machine and see the same GPU.
Without torch or without a CUDA device, `available()` is False and `share()` / `open_shared()` raise
RuntimeError saying so; nothing here imports torch until it is needed.

Status: not exercised on a GPU in this repository's CI (the CPU build of torch has no CUDA); the tests skip
without CUDA. The wire format is tested everywhere.
"""
from __future__ import annotations

import json

MAGIC = b'VIDACUDA1\n'
_DTYPES = ('uint8', 'int8', 'int16', 'int32', 'int64', 'float16', 'bfloat16', 'float32', 'float64', 'bool')


def available() -> bool:
    """True when torch is importable and sees a CUDA device."""
    try:
        import torch
    except ImportError:
        return False
    try:
        return bool(torch.cuda.is_available())
    except Exception:          # a broken driver install raises from deep inside; treat as unavailable
        return False


def _require_cuda():
    if not available():
        raise RuntimeError('CUDA IPC needs torch with a CUDA device; this process has none '
                           '(use the iox transport, which shares host frames)')
    import torch
    return torch


def encode_handle(fields: dict) -> bytes:
    """The wire form of a handle: MAGIC + JSON with bytes as hex. Pure; no torch."""
    return MAGIC + json.dumps({k: (v.hex() if isinstance(v, bytes) else v) for k, v in fields.items()},
                              sort_keys=True).encode()


_BYTE_FIELDS = ('storage_handle', 'ref_counter_handle', 'event_handle')
_INT_FIELDS = ('device', 'storage_size_bytes', 'storage_offset_bytes', 'ref_counter_offset', 'tensor_offset')


def decode_handle(blob: bytes) -> dict:
    """Parse and validate a handle; ValueError with the reason when it is not one."""
    if not blob.startswith(MAGIC):
        raise ValueError('not a vidaction CUDA IPC handle (bad magic)')
    try:
        fields = json.loads(blob[len(MAGIC):])
    except ValueError as err:
        raise ValueError(f'corrupt CUDA IPC handle: {err}') from None
    missing = [k for k in (*_BYTE_FIELDS, *_INT_FIELDS, 'size', 'stride', 'dtype', 'event_sync_required')
               if k not in fields]
    if missing:
        raise ValueError(f'CUDA IPC handle lacks {missing}')
    if fields['dtype'] not in _DTYPES:
        raise ValueError(f'CUDA IPC handle has unsupported dtype {fields["dtype"]!r}')
    for k in _BYTE_FIELDS:
        fields[k] = bytes.fromhex(fields[k]) if fields[k] is not None else None
    for k in _INT_FIELDS:
        fields[k] = int(fields[k])
    fields['size'] = [int(v) for v in fields['size']]
    fields['stride'] = [int(v) for v in fields['stride']]
    return fields


def share(tensor) -> bytes:
    """A handle to a CUDA tensor's memory that another process can open with open_shared()."""
    torch = _require_cuda()
    if not isinstance(tensor, torch.Tensor) or tensor.device.type != 'cuda':
        raise ValueError(f'share() needs a CUDA tensor, got {type(tensor).__name__} on '
                         f'{getattr(tensor, "device", "?")}')
    dtype = str(tensor.dtype).removeprefix('torch.')
    if dtype not in _DTYPES:
        raise ValueError(f'unsupported dtype {tensor.dtype} for CUDA IPC')
    (device, handle, size_bytes, offset_bytes, ref_handle, ref_offset, event_handle,
     event_sync) = tensor.untyped_storage()._share_cuda_()
    return encode_handle({
        'device': int(device), 'storage_handle': handle, 'storage_size_bytes': int(size_bytes),
        'storage_offset_bytes': int(offset_bytes), 'ref_counter_handle': ref_handle,
        'ref_counter_offset': int(ref_offset), 'event_handle': event_handle, 'event_sync_required': bool(event_sync),
        'size': list(tensor.size()), 'stride': list(tensor.stride()), 'tensor_offset': tensor.storage_offset(),
        'dtype': dtype})


def open_shared(blob: bytes):
    """The CUDA tensor a share() handle points to, mapped into this process (no copy, no host transfer)."""
    fields = decode_handle(blob)
    torch = _require_cuda()
    from torch.multiprocessing.reductions import rebuild_cuda_tensor
    return rebuild_cuda_tensor(
        torch.Tensor, torch.Size(fields['size']), tuple(fields['stride']), fields['tensor_offset'],
        torch.UntypedStorage, getattr(torch, fields['dtype']), fields['device'], fields['storage_handle'],
        fields['storage_size_bytes'], fields['storage_offset_bytes'], False, fields['ref_counter_handle'],
        fields['ref_counter_offset'], fields['event_handle'], fields['event_sync_required'])
