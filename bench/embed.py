#!/usr/bin/env python3
"""Embedding latency per backend: bgr8 640x480 frames in, L2-normalised vectors out (preprocessing included).

    python bench/embed.py [--quick] [--iterations 200] [--warmup 10] [--budget-s 30] [--batches 1,4]
                          [--rows cpu,clip_onnx,clip_hf,torch_cuda,tensorrt,tower_cpu,tower_cuda]
                          [--towers b32,l14] [--model-dir DIR] [--threads 1] [--json PATH]

One call = backend.embed_images(batch frames), timed from the uint8 frames to the unit vectors: cv2 resize /
crop / normalise, the model, the L2 normalisation (what the embedder node pays per frame; batch 4 is the
cost of one frame plus three policy regions, the TensorRT backend's default max_batch). Frames: evenly
spaced frames of the bundled demo video, resized to the working resolution 640x480. No DDS, no rclpy.
Rows, all in the same run:
  cpu         the offline default backend (ConSE: EfficientNet-Lite0 + YOLOv3-tiny COCO detector -> MiniLM), as
              the node builds it, and beside it `cpu:hog`, the same backend with the HOG people detector (the
              default until 2026-12-04), so the detector's cost shows as a ratio in the same run
  clip_onnx   --model-dir's ONNX export on onnxruntime, CPU (and CUDA when onnxruntime-gpu has it)
  clip_hf     --model-dir on torch, CPU fp32
  torch_cuda  --model-dir on torch, CUDA fp16
  tensorrt    --model-dir's ONNX export as a TensorRT engine, fp16 and int8 (only if `import tensorrt` works)
  tower_cpu   CLIP ViT-B/32 and ViT-L/14 image towers from their published configurations, random weights
              (timing only), through the clip_hf torch path on the CPU, fp32
  tower_cuda  the same on CUDA fp16 (torch_cuda path: pinned upload, GPU preprocessing), eager and replayed
              from CUDA graphs (the backend captures batch 1 at activate, other batches on their second call)
--model-dir defaults to the tiny random CLIP of test/tiny_models.py (32x32 input: its rows time the
preprocessing and runtime overhead, not a real model). Rows that cannot run here print "skipped: <reason>"
and carry "skipped" in the JSON. `x p50` / `x p99`: the cpu row's latency at the same batch divided by this
row's (higher = faster). --json writes {"results": [{"backend", "model", "precision", "device", "batch",
"p50_ms", "p99_ms", "mean_ms", "max_ms", "n", "per_frame_p50_ms", "x_p50_vs_cpu", "x_p99_vs_cpu", ...}], ...}.
Each row runs --iterations calls after --warmup, or fewer once --budget-s is spent (at least 3; n says how
many). --quick: 20 iterations, 2 warm-up, 5 s per row, CPU towers at batch 1 only.
Run it from outside the source tree after `source scripts/env.sh`: `cd /tmp && python /path/bench/embed.py`.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault('HF_HUB_DISABLE_PROGRESS_BARS', '1')
os.environ.setdefault('TRANSFORMERS_VERBOSITY', 'error')

import numpy as np  # noqa: E402

from vidaction_ros.perception.backends import BackendUnavailable, create_backend  # noqa: E402
from vidaction_ros.perception.backends.joint import CLIP_MEAN, CLIP_STD, ModelSpec, require  # noqa: E402
from vidaction_ros.tools.parity import DEMO_VIDEO, build_tiny_clip, prepare_dirs, video_frames  # noqa: E402
from vidaction_ros.stats import LatencyWindow  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TINY_MODELS = REPO / 'test' / 'tiny_models.py'
ROW_GROUPS = ('cpu', 'clip_onnx', 'clip_hf', 'torch_cuda', 'tensorrt', 'tower_cpu', 'tower_cuda')
MIN_SAMPLES = 3
RANDOM = 'random weights, timing only'
# Published image-tower configurations (transformers CLIPVisionConfig of openai/clip-vit-*).
TOWERS = {
    'b32': {'label': 'CLIP ViT-B/32 tower', 'projection_dim': 512,
            'vision': dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, patch_size=32,
                           image_size=224, intermediate_size=3072)},
    'l14': {'label': 'CLIP ViT-L/14 tower', 'projection_dim': 768,
            'vision': dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, patch_size=14,
                           image_size=224, intermediate_size=4096)},
}
# The text tower is not timed: a minimal one, so that CLIPModel (and get_image_features) can be built.
TINY_TEXT = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                 max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1)


# -- the random image towers through the repo's torch backend -----------------------------------------------
def tower_backend(tower: str, device: str, precision: str, threads: int, cuda_graph: bool = False):
    """A clip_hf (cpu) / torch_cuda (cuda) backend whose model is the `tower` image tower with random
    weights, built in memory from its configuration instead of loaded from a directory. Everything else
    (preprocessing, _forward, the output checks, L2) is the backend's own code."""
    from vidaction_ros.perception.backends.clip_torch import ClipTorchBackend, TorchCudaBackend
    base = TorchCudaBackend if device.startswith('cuda') else ClipTorchBackend
    cfg = TOWERS[tower]

    class RandomTowerBackend(base):
        def activate(self) -> None:
            torch = require('torch', self.name, 'install torch')
            transformers = require('transformers', self.name, 'pip install transformers')
            if self.device.startswith('cuda') and not torch.cuda.is_available():
                raise BackendUnavailable(f'torch {torch.__version__} sees no CUDA GPU')
            if self.device == 'cpu':
                torch.set_num_threads(self.threads)
            config = transformers.CLIPConfig(vision_config=cfg['vision'], text_config=TINY_TEXT,
                                             projection_dim=cfg['projection_dim'])
            torch.manual_seed(0)
            with torch.device(self.device):      # initialise on the device: L/14 on a CPU takes seconds
                model = transformers.CLIPModel(config)
            self._torch = torch
            self._dtype = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}[self.precision]
            self._model = model.eval().to(dtype=self._dtype)
            self._set_spec(ModelSpec(model_id=f'random:{cfg["label"]}', model_type='clip',
                                     dim=cfg['projection_dim'], image_size=cfg['vision']['image_size'],
                                     mean=CLIP_MEAN, std=CLIP_STD, resize='shortest_crop', context_length=8,
                                     pad_id=1))
            size = self.spec.image_size
            self.embed_images([np.zeros((size, size, 3), np.uint8)])   # warm-up, as activate() does

    if device.startswith('cuda'):
        return RandomTowerBackend(device=device, precision=precision, threads=threads, cuda_graph=cuda_graph)
    return RandomTowerBackend(device=device, precision=precision, threads=threads)


# -- timing ---------------------------------------------------------------------------------------------------
def time_calls(backend, frames: list[np.ndarray], batch: int, iterations: int, warmup: int,
               budget_s: float) -> dict:
    """Latency of backend.embed_images(batch frames): iterations calls (fewer once budget_s is spent, never
    fewer than MIN_SAMPLES), after warmup calls. Checks the output: batch unit vectors."""
    def batch_at(k: int) -> list[np.ndarray]:
        return [frames[(k * batch + i) % len(frames)] for i in range(batch)]

    for k in range(warmup):
        backend.embed_images(batch_at(k))
    window = LatencyWindow(size=max(iterations, MIN_SAMPLES))
    total, worst = 0.0, 0.0
    start = time.perf_counter()
    k = warmup
    while len(window) < iterations or len(window) < MIN_SAMPLES:
        chunk = batch_at(k)
        t0 = time.perf_counter()
        out = backend.embed_images(chunk)
        ms = (time.perf_counter() - t0) * 1e3
        window.add(ms)
        total, worst, k = total + ms, max(worst, ms), k + 1
        if len(out) != batch:
            raise RuntimeError(f'{backend.name}: {len(out)} embeddings for {batch} frames')
        norms = np.linalg.norm(np.stack([e.vector for e in out]), axis=1)
        if not np.allclose(norms, 1.0, atol=1e-3):
            raise RuntimeError(f'{backend.name}: vectors not L2-normalised (norms {norms})')
        if time.perf_counter() - start > budget_s and len(window) >= MIN_SAMPLES:
            break
    summary = window.summary()
    return {'n': summary['n'], 'p50_ms': summary['p50_ms'], 'p99_ms': summary['p99_ms'],
            'mean_ms': total / summary['n'], 'max_ms': worst, 'per_frame_p50_ms': summary['p50_ms'] / batch}


def base_row(backend: str, model: str, precision: str, device: str, batch: int, note: str = '') -> dict:
    return {'backend': backend, 'model': model, 'precision': precision, 'device': device, 'batch': batch,
            'n': 0, 'p50_ms': None, 'p99_ms': None, 'mean_ms': None, 'max_ms': None, 'per_frame_p50_ms': None,
            'x_p50_vs_cpu': None, 'x_p99_vs_cpu': None, 'note': note}


def run_rows(make, rows: list[dict], frames, args, log) -> list[dict]:
    """Activate the backend `make()` returns once, then time each row's batch with it. A backend that cannot
    run here marks every row skipped with the reason."""
    label = f"{rows[0]['backend']} {rows[0]['model']} {rows[0]['precision']} {rows[0]['device']}"
    log(f'{label} ...')
    backend = None
    try:
        t0 = time.perf_counter()
        backend = make()
        backend.activate()
        activate_s = time.perf_counter() - t0
        for row in rows:
            row.update(time_calls(backend, frames, row['batch'], args.iterations, args.warmup, args.budget_s))
            row.update(activate_s=activate_s, model_id=backend.model_id, dim=backend.dim)
            log(f"  batch {row['batch']}: p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms (n {row['n']})")
    except (BackendUnavailable, ImportError) as err:
        for row in rows:
            row.setdefault('skipped', str(err))
        log(f'  skipped: {err}')
    except (RuntimeError, ValueError, OSError) as err:   # e.g. an engine that fails to build: say so, go on
        for row in rows:
            if row['p50_ms'] is None:
                row['skipped'] = f'failed: {type(err).__name__}: {err}'
        log(f'  failed: {type(err).__name__}: {err}')
    finally:
        if backend is not None:
            backend.deactivate()
        backend = None
        gc.collect()
    return rows


def skipped_rows(rows: list[dict], reason: str) -> list[dict]:
    for row in rows:
        row['skipped'] = reason
    return rows


def add_ratios(results: list[dict]) -> None:
    """x_p50_vs_cpu / x_p99_vs_cpu: the cpu row's latency at the same batch over this row's (higher = faster)."""
    base = {r['batch']: r for r in results if r['backend'] == 'cpu' and 'skipped' not in r}
    for r in results:
        b = base.get(r['batch'])
        if b is None or 'skipped' in r or not r['p50_ms'] or not r['p99_ms']:
            continue
        r['x_p50_vs_cpu'] = b['p50_ms'] / r['p50_ms']
        r['x_p99_vs_cpu'] = b['p99_ms'] / r['p99_ms']


def table(results: list[dict]) -> str:
    head = (f"{'backend':<11}{'model':<64}{'prec':<6}{'device':<7}{'batch':>5}{'n':>5}{'p50 ms':>10}"
            f"{'p99 ms':>10}{'ms/frame':>10}{'x p50':>8}{'x p99':>8}")
    lines = [head, '-' * len(head)]

    def num(v, spec):
        return '-' if v is None else format(v, spec)

    for r in results:
        model = r['model'] if len(r['model']) <= 63 else r['model'][:60] + '...'
        lead = f"{r['backend']:<11}{model:<64}{r['precision']:<6}{r['device']:<7}{r['batch']:>5}"
        if 'skipped' in r:
            lines.append(f"{lead}  skipped: {r['skipped']}")
            continue
        lines.append(f"{lead}{r['n']:>5}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}{r['per_frame_p50_ms']:>10.2f}"
                     f"{num(r['x_p50_vs_cpu'], '.2f'):>8}{num(r['x_p99_vs_cpu'], '.2f'):>8}")
    return '\n'.join(lines)


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for pkg in ('numpy', 'opencv-python', 'opencv-python-headless', 'onnxruntime', 'onnxruntime-gpu', 'torch',
                'transformers', 'tensorrt'):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def gpu_name() -> str:
    try:
        import torch
        return torch.cuda.get_device_name() if torch.cuda.is_available() else ''
    except ImportError:
        return ''


def main(argv=None) -> int:
    parser = argparse.ArgumentParser('bench/embed.py', description=__doc__.split('\n\n')[0])
    parser.add_argument('--iterations', type=int, default=200, help='timed calls per row (at most)')
    parser.add_argument('--warmup', type=int, default=10, help='untimed calls per row first')
    parser.add_argument('--budget-s', type=float, default=30.0, help='stop a row after this many seconds of '
                        f'timed calls (at least {MIN_SAMPLES} calls)')
    parser.add_argument('--quick', action='store_true', help='20 iterations, 2 warm-up, 5 s a row, CPU towers '
                        'at batch 1 only')
    parser.add_argument('--batches', default='1,4', help='comma-separated frames per call')
    parser.add_argument('--rows', default=','.join(ROW_GROUPS), help='comma-separated subset of '
                        + ','.join(ROW_GROUPS))
    parser.add_argument('--towers', default='b32,l14', help="comma-separated subset of b32,l14 ('' = none)")
    parser.add_argument('--model-dir', default='', help='transformers CLIP/SigLIP directory or vidaction ONNX '
                        'export for the clip_* / torch_cuda / tensorrt rows (default: the tiny random CLIP '
                        'of test/tiny_models.py)')
    parser.add_argument('--work-dir', default='', help='exports and engines go here (default: a temporary '
                        'directory)')
    parser.add_argument('--threads', type=int, default=1, help='CPU threads of each runtime (the nodes\' '
                        'default is 1)')
    parser.add_argument('--video', default=DEMO_VIDEO, help='frames (resized to 640x480)')
    parser.add_argument('--json', default='', help='write the results here')
    args = parser.parse_args(argv)
    if args.quick:
        args.iterations, args.warmup, args.budget_s = 20, 2, 5.0
    groups = [g for g in args.rows.split(',') if g]
    unknown = set(groups) - set(ROW_GROUPS)
    if unknown:
        parser.error(f'unknown rows {sorted(unknown)}; choose from {list(ROW_GROUPS)}')
    towers = [t for t in args.towers.split(',') if t]
    if set(towers) - set(TOWERS):
        parser.error(f'unknown towers {sorted(set(towers) - set(TOWERS))}; choose from {list(TOWERS)}')
    batches = [int(b) for b in args.batches.split(',') if b]
    if not batches or min(batches) < 1:
        parser.error('--batches needs integers >= 1')
    threads = args.threads

    def log(msg):
        print(f'[embed] {msg}', file=sys.stderr, flush=True)

    frames = [frame for _, frame in video_frames(args.video, 16)()]
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix='vidaction-embed-') as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)

        def rows(backend, model, precision, device, note='', only=None):
            return [base_row(backend, model, precision, device, b, note) for b in (only or batches)]

        if 'cpu' in groups:
            results += run_rows(lambda: create_backend('cpu', threads=threads),
                                rows('cpu', 'conse default (EfficientNet-Lite0+YOLOv3-tiny)', 'fp32', 'cpu',
                                     'the offline default backend as the embedder node builds it'),
                                frames, args, log)
            results += run_rows(lambda: create_backend('cpu', detector='hog', threads=threads),
                                rows('cpu:hog', 'conse, detector hog (the default before 2026-12-04)', 'fp32',
                                     'cpu', 'the previous default, for the before/after ratio'),
                                frames, args, log)

        dir_groups = [g for g in ('clip_onnx', 'clip_hf', 'torch_cuda', 'tensorrt') if g in groups]
        if dir_groups:
            model = Path(args.model_dir).name if args.model_dir else 'tiny random CLIP 32px (test/tiny_models.py)'
            try:
                model_dir = Path(args.model_dir) if args.model_dir else build_tiny_clip(TINY_MODELS,
                                                                                        work / 'tiny-clip')
                dirs = prepare_dirs(model_dir, work)
            except (ImportError, OSError, ValueError) as err:
                dirs = {'hf': None, 'onnx': None, 'onnx_reason': f'no model directory: {err}'}
            hf, onnx = dirs['hf'], dirs['onnx']
            no_hf = dirs['onnx_reason'] if hf is None and onnx is None else \
                'needs a transformers directory; --model-dir is an ONNX export'
            if 'clip_onnx' in groups:
                for device in ('cpu', 'cuda'):
                    r = rows('clip_onnx', model, 'fp32', device)
                    if onnx is None:
                        results += skipped_rows(r, dirs['onnx_reason'])
                    else:
                        results += run_rows(lambda d=device: create_backend('clip_onnx', model_path=str(onnx),
                                                                            device=d, threads=threads),
                                            r, frames, args, log)
            for group, device, precision in (('clip_hf', 'cpu', 'fp32'), ('torch_cuda', 'cuda', 'fp16')):
                if group not in groups:
                    continue
                r = rows(group, model, precision, device)
                if hf is None:
                    results += skipped_rows(r, no_hf)
                else:
                    results += run_rows(lambda g=group, d=device, p=precision: create_backend(
                        g, model_path=str(hf), device=d, precision=p, threads=threads), r, frames, args, log)
            if 'tensorrt' in groups:
                for precision in ('fp16', 'int8'):
                    note = 'entropy calibration on the video' if precision == 'int8' else ''
                    r = rows('tensorrt', model, precision, 'cuda', note)
                    if onnx is None:
                        results += skipped_rows(r, dirs['onnx_reason'])
                        continue
                    params = dict(model_path=str(onnx), precision=precision, max_batch=max(batches),
                                  engine_cache_dir=str(work / 'tensorrt'), threads=threads)
                    if precision == 'int8':
                        params.update(calibration_source=args.video, calibration_frames=64)
                    results += run_rows(lambda p=params: create_backend('tensorrt', **p), r, frames, args, log)

        for tower in towers:
            label = f"{TOWERS[tower]['label']} ({RANDOM})"
            if 'tower_cpu' in groups:
                results += run_rows(lambda t=tower: tower_backend(t, 'cpu', 'fp32', threads),
                                    rows('clip_hf', label, 'fp32', 'cpu', RANDOM,
                                         only=[1] if args.quick else None), frames, args, log)
            if 'tower_cuda' in groups:
                for graphs in (False, True):
                    r = rows('torch_cuda', label + (' + CUDA graph' if graphs else ''), 'fp16', 'cuda', RANDOM)
                    for row in r:
                        row['cuda_graph'] = graphs
                    results += run_rows(lambda t=tower, g=graphs: tower_backend(t, 'cuda', 'fp16', threads, g),
                                        r, frames, args, log)

    add_ratios(results)
    print(f"embedding latency: bgr8 640x480 frames of {Path(args.video).name} -> L2-normalised vectors, "
          f"preprocessing included; {os.cpu_count()} CPUs, threads {threads}"
          + (f", GPU {gpu_name()}" if gpu_name() else ', no CUDA GPU'))
    print(table(results))
    print("(x p50 / x p99: the cpu default backend's latency at the same batch divided by this row's, same run; "
          "higher = faster. Tower rows: random weights, timing only.)")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'results': results, 'batches': batches, 'iterations': args.iterations,
                       'warmup': args.warmup, 'budget_s': args.budget_s, 'threads': threads,
                       'cpus': os.cpu_count(), 'gpu': gpu_name(), 'machine': platform.machine(),
                       'python': platform.python_version(), 'versions': versions(), 'video': args.video,
                       'frame_size': [640, 480],
                       'command': 'python bench/embed.py ' + ' '.join(argv if argv is not None
                                                                      else sys.argv[1:])}, f, indent=2)
        print(f'wrote {args.json}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
