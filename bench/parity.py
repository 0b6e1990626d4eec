#!/usr/bin/env python3
"""Embedding parity: every backend that can run here embeds the same video frames and texts as the fp32
reference; cosines, top-1 agreement and the policy's decisions are compared (vidaction_ros.tools.parity).

    python bench/parity.py [--model-dir DIR] [--frames 0] [--policy FILE|none] [--no-int8] [--json PATH]

Model: --model-dir, a transformers CLIP/SigLIP directory (or a vidaction ONNX export); default: the tiny
random CLIP of test/tiny_models.py, built into --work-dir (random weights: a plumbing check). A transformers
directory is exported to ONNX (clip_export) into --work-dir.
Reference: clip_hf fp32 on the CPU (clip_onnx fp32 when only an ONNX export is given).
Candidates: clip_onnx fp32 (CPU); clip_onnx with its image encoder quantised to INT8 weights by
onnxruntime.quantization.quantize_dynamic; clip_onnx on CUDA (onnxruntime-gpu); torch_cuda fp16;
tensorrt fp16 and int8 (calibrated on the video). Those that cannot run here are listed as skipped, with the
reason. Gates: fp32 cosine >= 0.999, fp16 >= 0.99 (minimum over every frame, region and text vector);
int8: agreement reported, not gated. Exit status 1 when a gated row fails.
Policy: the package's policy.yaml by default: its regions are embedded too and a PolicyEngine per backend
decides every frame; 'dec diff' counts frames whose action differs from the reference's.
Run it from outside the source tree after `source scripts/env.sh`: `cd /tmp && python /path/bench/parity.py`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault('HF_HUB_DISABLE_PROGRESS_BARS', '1')
os.environ.setdefault('TRANSFORMERS_VERBOSITY', 'error')

from vidaction_ros.perception.backends import BackendUnavailable  # noqa: E402
from vidaction_ros.tools.parity import DEMO_VIDEO, Candidate, build_tiny_clip, format_table, prepare_dirs, \
    quantize_int8, run_parity, video_frames  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TINY_MODELS = REPO / 'test' / 'tiny_models.py'
# Besides the policy's prompts: texts that are not in the policy, so top-1 agreement has a vocabulary.
TEXTS = ['a person walking on the grass near the camera', 'a car driving on the road', 'an empty street',
         'people crossing the road', 'a bicycle parked beside a fence', 'the path ahead is clear',
         'a crowd of pedestrians on a pavement', 'a photo of a dog']


def candidates(dirs: dict, work: Path, args) -> tuple[Candidate, list[Candidate], list[dict]]:
    """The reference, the candidates, and rows skipped before any backend is created."""
    threads = {'threads': args.threads}
    skipped = []
    hf, onnx = dirs['hf'], dirs['onnx']
    if hf is not None:
        reference = Candidate('clip_hf fp32 (reference)', 'clip_hf', {'model_path': str(hf), 'device': 'cpu',
                                                                       'precision': 'fp32', **threads}, 'fp32')
    else:
        reference = Candidate('clip_onnx fp32 (reference)', 'clip_onnx', {'model_path': str(onnx), **threads},
                              'fp32')
    out = []
    if onnx is not None:
        if hf is not None:
            out.append(Candidate('clip_onnx fp32', 'clip_onnx', {'model_path': str(onnx), **threads}, 'fp32'))
        if args.no_int8:
            skipped.append({'label': 'clip_onnx int8 (dynamic)', 'backend': 'clip_onnx', 'precision': 'int8',
                            'note': '', 'skipped': '--no-int8'})
        else:
            try:
                int8_dir = quantize_int8(onnx, work / 'onnx-int8-dynamic')
                out.append(Candidate('clip_onnx int8 (dynamic)', 'clip_onnx',
                                     {'model_path': str(int8_dir), **threads}, 'int8',
                                     'image encoder: quantize_dynamic QInt8 weights; text encoder fp32'))
            except BackendUnavailable as err:
                skipped.append({'label': 'clip_onnx int8 (dynamic)', 'backend': 'clip_onnx', 'precision': 'int8',
                                'note': '', 'skipped': str(err)})
        out.append(Candidate('clip_onnx cuda fp32', 'clip_onnx', {'model_path': str(onnx), 'device': 'cuda',
                                                                  **threads}, 'fp32'))
    else:
        for label in ('clip_onnx fp32', 'clip_onnx int8 (dynamic)', 'tensorrt fp16', 'tensorrt int8'):
            skipped.append({'label': label, 'backend': label.split()[0], 'precision': label.split()[1],
                            'note': '', 'skipped': dirs['onnx_reason']})
    if hf is not None:
        out.append(Candidate('torch_cuda fp16', 'torch_cuda', {'model_path': str(hf), 'device': 'cuda',
                                                               'precision': 'fp16', **threads}, 'fp16'))
    else:
        skipped.append({'label': 'torch_cuda fp16', 'backend': 'torch_cuda', 'precision': 'fp16', 'note': '',
                        'skipped': 'needs a transformers directory; --model-dir is an ONNX export'})
    if onnx is not None:
        trt = {'model_path': str(onnx), 'max_batch': 4, 'engine_cache_dir': str(work / 'tensorrt'), **threads}
        out.append(Candidate('tensorrt fp16', 'tensorrt', {**trt, 'precision': 'fp16'}, 'fp16'))
        out.append(Candidate('tensorrt int8 (calibrated)', 'tensorrt',
                             {**trt, 'precision': 'int8', 'calibration_source': args.video,
                              'calibration_frames': args.calibration_frames}, 'int8',
                             f'entropy calibration on {args.calibration_frames} frames of the video'))
    return reference, out, skipped


def main(argv=None) -> int:
    parser = argparse.ArgumentParser('bench/parity.py', description=__doc__.split('\n\n')[0])
    parser.add_argument('--model-dir', default='', help='transformers directory or vidaction ONNX export '
                        '(default: the tiny random CLIP of test/tiny_models.py)')
    parser.add_argument('--work-dir', default='', help='where exports, INT8 models and engines go (default: '
                        'a temporary directory)')
    parser.add_argument('--video', default=DEMO_VIDEO, help='frames to embed (resized to 640x480)')
    parser.add_argument('--frames', type=int, default=0, help='evenly spaced frames of the video (0 = all)')
    parser.add_argument('--policy', default='', help="policy YAML ('' = the package's; 'none' = no decisions)")
    parser.add_argument('--threads', type=int, default=1, help='CPU threads of each runtime')
    parser.add_argument('--no-int8', action='store_true', help='skip the quantize_dynamic INT8 row')
    parser.add_argument('--calibration-frames', type=int, default=64, help='tensorrt int8 calibration frames')
    parser.add_argument('--json', default='', help='write the report here')
    args = parser.parse_args(argv)

    def log(msg):
        print(f'[parity] {msg}', file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix='vidaction-parity-') as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.model_dir:
            model_dir, model_note = Path(args.model_dir), args.model_dir
        else:
            model_dir = build_tiny_clip(TINY_MODELS, work / 'tiny-clip')
            model_note = 'tiny random CLIP (test/tiny_models.py; random weights, plumbing check)'
        log(f'model {model_note}')
        try:
            dirs = prepare_dirs(model_dir, work)
            reference, cands, skipped = candidates(dirs, work, args)
            policy = None
            if args.policy != 'none':
                from vidaction_ros.paths import resolve_policy_file
                from vidaction_ros.policy import load_policy
                policy = load_policy(resolve_policy_file(args.policy))
            start = time.perf_counter()
            report = run_parity(reference, cands, video_frames(args.video, args.frames), TEXTS, policy, log)
        except (BackendUnavailable, OSError, ValueError) as err:   # no reference, no comparison: say why
            print(f'parity: {err}', file=sys.stderr)
            return 2
        report['results'].extend(skipped)
        report.update({'model': model_note, 'video': args.video, 'policy': args.policy or 'package default',
                       'seconds': time.perf_counter() - start, 'cpus': os.cpu_count(),
                       'machine': platform.machine(), 'python': platform.python_version(),
                       'command': 'python bench/parity.py ' + ' '.join(argv if argv is not None else sys.argv[1:])})
    print(f'model: {model_note}')
    print(format_table(report))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(report, f, indent=2)
        print(f'wrote {args.json}')
    return 0 if report['passed'] else 1


if __name__ == '__main__':
    raise SystemExit(main())
