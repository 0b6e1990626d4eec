"""The CLIP-from-a-path route through the real pipeline: a tiny random CLIP the test builds and exports to
ONNX, loaded by the embedder (backend clip_onnx) and by the policy node's text side, four processes, real
video, lock-step. The random weights mean nothing, so the test checks the route, not the decisions: every
frame gets exactly one Action, in order, at its media time, from a model both nodes agree on, with
scores the policy could compute (finite for prompt triggers) and a matched prompt from the policy file.
"""
import math

import pytest
import yaml

import tiny_models
from ros_helpers import run_until_frame_decided, stamp_s

pytestmark = [pytest.mark.integration, pytest.mark.slow]
pytest.importorskip('transformers')

FRAMES = 30


def policy_prompts():
    from vidaction_ros.paths import resolve_policy_file
    data = yaml.safe_load(open(resolve_policy_file('')).read())
    prompts = set()

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ('prompts', 'prompt') and isinstance(value, (list, str)):
                    prompts.update([value] if isinstance(value, str) else value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)
    walk(data)
    return prompts


def test_pipeline_runs_on_a_clip_exported_to_onnx(tmp_path, video_path):
    from vidaction_ros.perception.backends.clip_export import export
    from vidaction_ros.perception.backends.joint import read_manifest
    onnx_dir = export(tiny_models.build('clip', tmp_path / 'hf'), tmp_path / 'onnx')
    model_id = read_manifest(onnx_dir).model_id
    actions, complete, code, text = run_until_frame_decided(
        ['--mode', 'processes', '--lockstep', '--source', video_path,
         '--backend', 'clip_onnx', '--model_path', str(onnx_dir),
         '--set', f'camera.max_frames={FRAMES}',
         '--set', 'camera.lockstep_action_subscribers=2',
         # The tiny model loads in a blink: give DDS time to match this test's subscriber
         # to the policy's publisher before the first Action (see camera lockstep_settle_s).
         '--set', 'camera.lockstep_settle_s=5.0'], FRAMES - 1, tmp_path / 'pipeline.log', timeout=300)
    assert complete, f'not every frame was decided; log tail:\n{text[-3000:]}'
    assert code == 0, text[-3000:]
    assert f'backend clip_onnx ({model_id}, dim {tiny_models.DIM})' in text   # the embedder loaded the export
    assert 'prompts were embedded with' not in text                            # policy agreed on the model

    sequences = [a.frame_sequence for a in actions]
    assert sequences == sorted(sequences) and set(sequences) == set(range(FRAMES))
    assert len(sequences) == FRAMES                      # lock-step: one Action per frame, none twice
    prompts = policy_prompts()
    for action in actions:
        assert stamp_s(action) == pytest.approx(action.frame_sequence * 0.1, abs=1e-3)   # 10 fps media time
        assert action.capture_to_decide_ms >= action.embed_ms > 0
        if action.trigger == 'prompt':
            assert math.isfinite(action.score) and action.matched_prompt in prompts
