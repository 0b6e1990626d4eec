#!/usr/bin/env python3
"""GPU frames across processes: the cuda transport vs iceoryx2 host frames plus an upload, same run.

    python bench/cuda_frames.py [--frames 600] [--rate 30] [--sizes 640x480,1920x1080] [--json PATH]

No ROS needed (the GPU machine has none): the pure cores only (iox_frames, cuda_frames), two processes. A hop
starts when the producer hands a filled host bgr8 frame to the transport and ends when the consumer holds it,
readable, on the GPU:
  iox_upload   iox_frames: the producer copies the frame into a loaned iceoryx2 sample (host shared memory);
               the consumer takes the sample, copies it into a pinned staging buffer and uploads it
               (synchronised): what a GPU embedder on the iox transport does;
  cuda         cuda_frames: the producer uploads the frame once into the CUDA IPC-shared device buffer of a
               loaned iceoryx2 control sample (CudaFrameWriter.fill); the consumer takes the sample, maps the
               buffer it names (DeviceFrames.view, each buffer mapped once) and reads it in place; the
               sample is held, so the buffer cannot be rewritten, until its stream is synchronised.
The consumer hears of each frame by the iceoryx2 event (IoxFrameReader: the newest frame wins; the sample's
header carries the sequence and the hand-off time): the same notice for both, so the difference is the
pixels' path. The first 20 frames warm up and are not counted. Frames: the bundled demo video scaled, or a
synthetic gradient when OpenCV or the video is missing. Prints p50/p99/max per mode and size and the ratio to
iox_upload (the shared-memory ring's shm_upload row, the baseline before, went with the ring); --json writes
{"results": [{"mode", "width", "height", "p50_ms", "p99_ms", "max_ms", "delivered", "lost", "dropped"}],
"device": ...} (lost: FrameLost in the consumer; dropped: superseded before the consumer took them).
Without CUDA (or without iceoryx2) it says so in one line and exits 2.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))   # the pure cores, no install

MODES = ('iox_upload', 'cuda')
BASELINE = 'iox_upload'
WARM = 20                 # frames 0..WARM-1 warm up (first mappings, first-touch page faults, pinned buffers)


def percentile(values, q):
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float('nan')


# -- consumer (child process) ---------------------------------------------------------------------------------
def consume(mode: str, name: str) -> int:
    import torch
    from vidaction_ros.transport import iox_frames
    from vidaction_ros.transport.frame_store import FrameLost
    latencies, lost = {}, 0
    reader = iox_frames.IoxFrameReader(name)
    device_frames = staging = device_frame = None
    if mode == 'cuda':
        from vidaction_ros.transport.cuda_frames import DeviceFrames
        device_frames = DeviceFrames()
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), done.set()), daemon=True).start()
    print('ready', flush=True)
    while True:
        # 'done' comes after the last send: iceoryx2 delivered every sample into our queue by then, so one
        # more round of taking after it sees them all.
        finished = done.is_set()
        if not finished:
            reader.wait(0.1)
        while (frame := reader.take_newest()) is not None:
            try:
                if mode == 'cuda':
                    tensor = device_frames.view(frame.control, name)   # the device buffer, in place
                    tensor[0, 0, 0].item()                             # touch it: mapped and readable on the GPU
                    received_ns = time.monotonic_ns()
                    device_frames.synchronize(tensor)                  # before the sample is released
                else:
                    host = frame.array                                 # the sample in place (read-only)
                    if staging is None or staging.shape != host.shape:
                        staging = torch.empty(host.shape, dtype=torch.uint8).pin_memory()
                        device_frame = torch.empty(host.shape, dtype=torch.uint8, device='cuda')
                    staging.numpy()[...] = host
                    device_frame.copy_(staging, non_blocking=True)
                    torch.cuda.current_stream().synchronize()
                    received_ns = time.monotonic_ns()
                latencies[frame.sequence] = (received_ns - frame.stamp_ns) / 1e6
            except FrameLost:
                lost += 1
            finally:
                frame.release()
        if finished:
            break
    print(json.dumps({'latencies_ms': {str(k): v for k, v in latencies.items()}, 'lost': lost,
                      'dropped': reader.counts['dropped']}), flush=True)
    reader.close()
    if device_frames is not None:
        device_frames.close()
    return 0


# -- producer -------------------------------------------------------------------------------------------------
def run_mode(mode: str, width: int, height: int, frames: int, rate: float) -> dict:
    from vidaction_ros.ingest.frame_source import demo_frames
    from vidaction_ros.transport import iox_frames
    images = demo_frames(width, height, synthetic_if_missing=True)
    name = iox_frames.service_name(f'bench/cuda_frames/{mode}_{os.getpid()}_{width}x{height}', 'bench')
    writer = None
    if mode == 'cuda':
        from vidaction_ros.transport.cuda_frames import CONTROL_BYTES, CudaFrameWriter
        publisher = iox_frames.IoxFramePublisher(name, CONTROL_BYTES)
        writer = CudaFrameWriter(width * height * 3)
    else:
        publisher = iox_frames.IoxFramePublisher(name, width * height * 3)

    def send(image, sequence: int) -> None:
        sent_ns = time.monotonic_ns()                      # hand-off of the filled host frame: the hop starts
        if writer is not None:
            loan = publisher.loan_control(height, width, CONTROL_BYTES)
            try:
                writer.fill(loan, image)                   # up once into the chunk's device buffer, synchronised
            except BaseException:
                publisher.abandon(loan)
                raise
        else:
            loan = publisher.loan(height, width)
            np.copyto(loan.array, image)                   # into the host sample
        publisher.send(loan, sequence=sequence, stamp_ns=sent_ns)   # the consumer is woken here

    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), '--consume', mode, name],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if child.stdout.readline().strip() != 'ready':
            raise RuntimeError(f'{mode} consumer process did not start (exit code {child.wait(30)}; see above)')
        period = 1.0 / rate
        next_at = time.monotonic()
        for i in range(frames + WARM):
            send(images[i % len(images)], i)
            next_at += period
            time.sleep(max(0.0, next_at - time.monotonic()))
        child.stdin.write('done\n')
        child.stdin.flush()
        line = child.stdout.readline()
        if not line.startswith('{'):
            raise RuntimeError(f'{mode} consumer process gave no result (exit code {child.wait(30)}; see above)')
        result = json.loads(line)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
        publisher.close()
        if writer is not None:
            writer.close()
    values = [v for k, v in sorted((int(k), v) for k, v in result['latencies_ms'].items()) if k >= WARM]
    return {'mode': mode, 'width': width, 'height': height, 'p50_ms': percentile(values, 50),
            'p99_ms': percentile(values, 99), 'max_ms': max(values) if values else float('nan'),
            'delivered': len(values), 'lost': result['lost'], 'dropped': frames - len(values) - result['lost']}


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
    from vidaction_ros.transport import cuda_ipc, iox_frames
    if not cuda_ipc.available():
        print('bench/cuda_frames.py needs torch with a CUDA device; this machine has none', file=sys.stderr)
        return 2
    if not iox_frames.available():
        print(f'bench/cuda_frames.py needs iceoryx2 ({iox_frames.REQUIRED}); it is not installed', file=sys.stderr)
        return 2
    import torch
    results = []
    for size in args.sizes.split(','):
        width, height = (int(v) for v in size.lower().split('x'))
        for mode in MODES:
            print(f'[bench] {mode} {width}x{height}: {args.frames} frames at {args.rate:g} Hz ...', file=sys.stderr)
            results.append(run_mode(mode, width, height, args.frames, args.rate))
    print(f"{'size':<11}{'mode':<12}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'p99 x':>8}{'deliv':>7}{'lost':>6}"
          f"{'drop':>6}")
    for row in results:
        base = next(r for r in results if r['mode'] == BASELINE and r['width'] == row['width']
                    and r['height'] == row['height'])
        ratio = base['p99_ms'] / row['p99_ms'] if row['p99_ms'] else float('nan')
        print(f"{row['width']}x{row['height']:<6}{row['mode']:<12}{row['p50_ms']:>9.3f}{row['p99_ms']:>9.3f}"
              f"{row['max_ms']:>9.3f}{ratio:>8.1f}{row['delivered']:>7}{row['lost']:>6}{row['dropped']:>6}")
    device = torch.cuda.get_device_name(0)
    print(f'({args.frames} frames at {args.rate:g} Hz per row; p99 x: {BASELINE} p99 / this p99; {device})')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'results': results, 'device': device, 'frames': args.frames, 'rate_hz': args.rate,
                       'baseline': BASELINE}, f, indent=1)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
