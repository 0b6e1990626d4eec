#!/usr/bin/env python3
"""GPU frames across processes: the cuda transport vs the shared-memory ring plus an upload, same run.

    python bench/cuda_frames.py [--frames 600] [--rate 30] [--sizes 640x480,1920x1080] [--json PATH]

No ROS needed (the GPU machine has none): the pure cores only, two processes. A hop starts when the producer
hands a filled host bgr8 frame to the transport and ends when the consumer holds it, readable, on the GPU:
  shm_upload   shm_ring: the producer copies the frame into the host ring; the consumer copies it out and
               uploads it (pinned staging buffer, synchronised): what a GPU embedder on the shm transport does;
  cuda         cuda_frames: the producer uploads the frame once into a CUDA IPC-shared device slot; the
               consumer maps the slot and holds it in place (validated after its stream is synchronised).
The consumer hears of each frame over a pipe (slot, generation, send time): the same notice for both, so the
difference is the pixels' path. Frames: the bundled demo video scaled, or a synthetic gradient when OpenCV or
the video is missing. Prints p50/p99/max per mode and size and the ratio to shm_upload; --json writes
{"results": [{"mode", "width", "height", "p50_ms", "p99_ms", "max_ms", "delivered", "lost"}], "device": ...}.
Without CUDA it says so and exits 2.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))   # the pure cores, no install

MODES = ('shm_upload', 'cuda')


def percentile(values, q):
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float('nan')


# -- consumer (child process) ---------------------------------------------------------------------------------
def consume(mode: str, name: str) -> int:
    import torch
    from vidaction_ros.transport.frame_store import FrameLost
    latencies, lost = [], 0
    if mode == 'cuda':
        from vidaction_ros.transport.cuda_frames import CudaFrameReader
        reader = CudaFrameReader(name)
    else:
        from vidaction_ros.transport.shm_ring import ShmRingReader
        reader = ShmRingReader(name)
        staging, device_frame = None, None
    print('ready', flush=True)
    for line in sys.stdin:
        if line.strip() == 'done':
            break
        slot, generation, sent_ns = (int(v) for v in line.split())
        try:
            if mode == 'cuda':
                with reader.view(slot, generation) as frame:
                    frame[0, 0, 0].item()            # touch it: mapped and readable on the GPU
                    received_ns = time.monotonic_ns()
            else:
                host = reader.read(slot, generation)
                if staging is None or staging.shape != host.shape:
                    staging = torch.empty(host.shape, dtype=torch.uint8).pin_memory()
                    device_frame = torch.empty(host.shape, dtype=torch.uint8, device='cuda')
                staging.numpy()[...] = host
                device_frame.copy_(staging, non_blocking=True)
                torch.cuda.current_stream().synchronize()
                received_ns = time.monotonic_ns()
        except FrameLost:
            lost += 1
            continue
        latencies.append((received_ns - sent_ns) / 1e6)
    print(json.dumps({'latencies_ms': latencies, 'lost': lost}), flush=True)
    reader.close()
    return 0


# -- producer -------------------------------------------------------------------------------------------------
def run_mode(mode: str, width: int, height: int, frames: int, rate: float) -> dict:
    from vidaction_ros.ingest.frame_source import demo_frames
    images = demo_frames(width, height, synthetic_if_missing=True)
    name = f'vidaction_bench_{mode}_{os.getpid()}_{width}'
    if mode == 'cuda':
        from vidaction_ros.transport.cuda_frames import CudaFrameWriter
        writer = CudaFrameWriter(name, slots=4, max_bytes=width * height * 3)
    else:
        from vidaction_ros.transport.shm_ring import ShmRingWriter
        writer = ShmRingWriter(name, slots=4, slot_bytes=width * height * 3)
    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), '--consume', mode, writer.name],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == 'ready'
        period = 1.0 / rate
        next_at = time.monotonic()
        for i in range(frames + 20):                       # the first 20 warm up (not counted by the consumer
            sent_ns = time.monotonic_ns()                  # either: it sees them, so they are cut below)
            slot, generation = writer.write(images[i % len(images)])
            child.stdin.write(f'{slot} {generation} {sent_ns}\n')
            child.stdin.flush()
            next_at += period
            time.sleep(max(0.0, next_at - time.monotonic()))
        child.stdin.write('done\n')
        child.stdin.flush()
        result = json.loads(child.stdout.readline())
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
        writer.close()
    values = result['latencies_ms'][20:]
    return {'mode': mode, 'width': width, 'height': height, 'p50_ms': percentile(values, 50),
            'p99_ms': percentile(values, 99), 'max_ms': max(values) if values else float('nan'),
            'delivered': len(values), 'lost': result['lost']}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--frames', type=int, default=600)
    parser.add_argument('--rate', type=float, default=30.0)
    parser.add_argument('--sizes', default='640x480,1920x1080')
    parser.add_argument('--json', default='')
    parser.add_argument('--consume', nargs=2, metavar=('MODE', 'NAME'), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.consume:
        return consume(*args.consume)
    from vidaction_ros.transport import cuda_ipc
    if not cuda_ipc.available():
        print('bench/cuda_frames.py needs torch with a CUDA device; this machine has none', file=sys.stderr)
        return 2
    import torch
    results = []
    for size in args.sizes.split(','):
        width, height = (int(v) for v in size.lower().split('x'))
        for mode in MODES:
            print(f'[bench] {mode} {width}x{height}: {args.frames} frames at {args.rate:g} Hz ...', file=sys.stderr)
            results.append(run_mode(mode, width, height, args.frames, args.rate))
    print(f"{'size':<11}{'mode':<12}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'p99 x':>8}{'deliv':>7}{'lost':>6}")
    for row in results:
        base = next(r for r in results if r['mode'] == 'shm_upload' and r['width'] == row['width'])
        ratio = base['p99_ms'] / row['p99_ms'] if row['p99_ms'] else float('nan')
        print(f"{row['width']}x{row['height']:<6}{row['mode']:<12}{row['p50_ms']:>9.3f}{row['p99_ms']:>9.3f}"
              f"{row['max_ms']:>9.3f}{ratio:>8.1f}{row['delivered']:>7}{row['lost']:>6}")
    device = torch.cuda.get_device_name(0)
    print(f'({args.frames} frames at {args.rate:g} Hz per row; p99 x: shm_upload p99 / this p99; {device})')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'results': results, 'device': device, 'frames': args.frames, 'rate_hz': args.rate}, f,
                      indent=1)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
