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


def test_device_scores_travel_in_the_embedding_and_decide_as_the_policy_would(tmp_path, video_path):
    # Four processes: the embedder (clip_hf, torch, CPU here; CUDA on a robot) scores the policy's prompt
    # rules with the embedding and sends the scores in the Embedding; the policy decides with them. The same
    # frames with prompt_scoring policy (the policy scores the vectors) are the reference: same actions, same
    # scores within float32 rounding.
    hf_dir = tiny_models.build('clip', tmp_path / 'hf')
    runs = {}
    for mode in ('embedder', 'policy'):
        actions, complete, code, text = run_until_frame_decided(
            ['--mode', 'processes', '--lockstep', '--source', video_path,
             '--backend', 'clip_hf', '--model_path', str(hf_dir),
             '--set', f'embedder.prompt_scoring={mode}',
             '--set', 'camera.max_frames=12', '--set', 'camera.lockstep_action_subscribers=2',
             '--set', 'camera.lockstep_settle_s=5.0'], 11, tmp_path / f'pipeline_{mode}.log', timeout=300)
        assert complete and code == 0, f'prompt_scoring={mode}: {text[-3000:]}'
        runs[mode] = (sorted(actions, key=lambda a: a.frame_sequence), text)
    on_actions, on_text = runs['embedder']
    off_actions, off_text = runs['policy']
    assert 'scored on cpu with the embedding' in on_text and 'deciding with the prompt scores' in on_text
    assert 'scoring the vectors here' not in on_text
    assert 'deciding with the prompt scores' not in off_text
    assert [a.frame_sequence for a in on_actions] == [a.frame_sequence for a in off_actions] == list(range(12))
    for on, off in zip(on_actions, off_actions):
        assert (on.action, on.trigger, on.matched_prompt) == (off.action, off.trigger, off.matched_prompt)
        assert [s.name for s in on.scores] == [s.name for s in off.scores]
        for a, b in zip(on.scores, off.scores):
            assert (math.isnan(a.score) and math.isnan(b.score)) or abs(a.score - b.score) <= 1e-5, (a, b)
