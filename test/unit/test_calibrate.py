"""vidaction-calibrate: threshold suggestions on synthetic score series whose answers are worked out by hand,
per-prompt scores from the real PolicyEngine on hand-made vectors, and one run of the real model over a slice
of the bundled video checked against the hand labels (test/data/vtest_near_zone_labels.yaml)."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import yaml

from vidaction_ros.perception.backends import FrameEmbedding, RegionVector
from vidaction_ros.tools.calibrate import main
from vidaction_ros.tools.score_trace import ScoreTracer
from vidaction_ros.tools.thresholds import (best_threshold, choose_rules, suggest_from_labels, suggest_from_normal,
                                            suggestion_yaml)
from vidaction_ros.tools.eval_metrics import load_labels, parse_labels
from vidaction_ros.policy import parse_policy

from conftest import DATA

LABELS = DATA / 'vtest_near_zone_labels.yaml'

POLICY = {
    'version': 1,
    'default_action': {'name': 'CONTINUE', 'code': 'CONTINUE'},
    'regions': {'near': {'polygon': [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]}},
    'actions': [
        {'name': 'STOP', 'code': 'STOP', 'priority': 200, 'region': 'near', 'prompts': ['a person', 'a car'],
         'contrast': ['an empty lawn'], 'enter': 0.3, 'exit': 0.2},
        {'name': 'SOFT', 'code': 'SLOW_DOWN', 'priority': 100, 'prompts': ['a car'], 'contrast': ['an empty lawn'],
         'score': 'softmax', 'temperature': 0.1, 'enter': 0.5},
    ],
    'temporal': [{'name': 'HOVER', 'code': 'HOVER', 'priority': 150, 'lookback_s': 2.0, 'below_similarity': 0.8,
                  'exit_similarity': 0.85}],
}
SPEC = parse_policy(POLICY)
STOP, SOFT = SPEC.actions
HOVER = SPEC.temporal[0]


def labelled(neg, pos):
    scores = list(neg) + list(pos)
    return scores, [0] * len(neg) + [1] * len(pos)


# -- best threshold -------------------------------------------------------------------------------------------
def test_separable_scores_put_enter_in_the_middle_of_the_gap():
    scores, y = labelled([0.0, 0.1, 0.2], [0.6, 0.7])
    for criterion in ('youden', 'f1'):
        thr, value = best_threshold(scores, y, criterion)
        assert thr == pytest.approx(0.4) and value == pytest.approx(1.0)


def test_overlapping_scores_by_hand():
    # sorted: 0.1n 0.2n 0.3n 0.4p 0.5p 0.6n 0.7p 0.8p. Firing from 0.4 up: TP 4, FP 1 -> J 0.75, F1 8/9;
    # every other cut is worse (e.g. from 0.7: J 0.5, F1 4/6; from 0.3: J 0.5, F1 0.8).
    scores, y = labelled([0.1, 0.2, 0.3, 0.6], [0.4, 0.5, 0.7, 0.8])
    assert best_threshold(scores, y, 'youden') == pytest.approx((0.35, 0.75))
    assert best_threshold(scores, y, 'f1') == pytest.approx((0.35, 8 / 9))


def test_f1_fires_on_everything_when_most_frames_are_positive_and_youden_does_not():
    # 10 positives, 6 of them unseen by the model (0.05); 3 negatives (0.0, 0.1, 0.1).
    # Cut below 0.05: TP 10, FP 2 -> F1 20/22, J 1 - 2/3. Cut in (0.1, 0.6]: TP 4, FP 0 -> F1 8/14, J 0.4.
    scores, y = labelled([0.0, 0.1, 0.1], [0.05] * 6 + [0.6] * 4)
    thr, f1 = best_threshold(scores, y, 'f1')
    assert thr == pytest.approx(0.025) and f1 == pytest.approx(20 / 22)
    thr, j = best_threshold(scores, y, 'youden')
    assert thr == pytest.approx(0.35) and j == pytest.approx(0.4)


def test_a_false_positive_limit_keeps_f1_off_the_empty_frames():
    # The scores above. With no negative frame allowed to fire the cut must lie above 0.1: (0.1, 0.6], F1 8/14.
    scores, y = labelled([0.0, 0.1, 0.1], [0.05] * 6 + [0.6] * 4)
    assert best_threshold(scores, y, 'f1', max_fpr=0.0) == pytest.approx((0.35, 8 / 14))
    # One of the three negatives may fire (FPR 1/3): the cut below 0.05 is still out (FPR 2/3), (0.05, 0.1] too
    # (it fires on both 0.1 negatives), so the answer is the same.
    assert best_threshold(scores, y, 'f1', max_fpr=0.34) == pytest.approx((0.35, 8 / 14))


def test_when_no_cut_meets_the_limit_nothing_fires():
    # The only negative scores highest: any cut that fires on a positive fires on it too.
    scores, y = labelled([0.9], [0.1, 0.2])
    thr, j = best_threshold(scores, y, 'youden', max_fpr=0.0)
    assert thr == pytest.approx(0.901) and j == 0.0              # just above every score
    s = suggest_from_labels(STOP, scores, y, max_fpr=0.0)
    assert s.frames['tp'] == 0 and s.frames['fp'] == 0 and 'does not separate' in s.note
    with pytest.raises(ValueError, match='max_fpr'):
        best_threshold(scores, y, max_fpr=1.5)


def test_equally_good_cuts_take_the_widest_gap():
    # J = 0.5 for a cut in (0.0, 0.1] (gap 0.1) and in (0.25, 0.5] (gap 0.25): the wider one wins.
    scores, y = labelled([0.0, 0.25], [0.1, 0.5])
    assert best_threshold(scores, y, 'youden') == pytest.approx((0.375, 0.5))


def test_needs_both_classes_and_ignores_nan():
    with pytest.raises(ValueError, match='positive and negative'):
        best_threshold([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match='0 positive'):
        best_threshold([0.1, float('nan')], [0, 1])
    assert best_threshold([0.0, float('nan'), 1.0], [0, 0, 1])[0] == pytest.approx(0.5)


# -- suggestions ----------------------------------------------------------------------------------------------
def test_labels_suggestion_with_automatic_hysteresis():
    scores, y = labelled([0.0, 0.1, 0.2], [0.6, 0.7])
    s = suggest_from_labels(STOP, scores, y, quantile=100)
    # enter half-way between 0.2 and 0.6; exit half-way from enter down to the highest negative (p100 = 0.2).
    assert (s.kind, s.method) == ('prompt', 'youden')
    assert s.enter == pytest.approx(0.4) and s.exit == pytest.approx(0.3)
    assert s.normal_level == pytest.approx(0.2)
    assert (s.frames['tp'], s.frames['fp'], s.frames['fn'], s.frames['tn']) == (2, 0, 0, 3)
    # The policy's own enter (0.3) on the same frames: also perfect here.
    assert s.current['enter'] == 0.3 and s.current['f1'] == 1.0


def test_labels_suggestion_with_explicit_hysteresis_and_ignored_frames():
    scores = [0.0, 0.1, 0.2, 0.9, 0.6, 0.7]
    y = [0, 0, 0, -1, 1, 1]            # the 0.9 frame is ambiguous: ignored
    s = suggest_from_labels(STOP, scores, y, hysteresis=0.05)
    assert s.enter == pytest.approx(0.4) and s.exit == pytest.approx(0.35)
    assert s.frames['ignored'] == 1


def test_labels_suggestion_for_a_memory_rule_is_mirrored():
    # Similarity drops (0.5, 0.65) during the labelled event, stays high (0.95-0.99) otherwise.
    scores, y = labelled([0.95, 0.97, 0.99], [0.5, 0.65])
    s = suggest_from_labels(HOVER, scores, y, quantile=100)
    assert s.kind == 'temporal'
    assert s.enter == pytest.approx(0.8)          # below_similarity: between 0.65 and 0.95
    assert s.exit == pytest.approx(0.875)         # exit_similarity: half-way up to the lowest normal (0.95)
    assert s.frames['tp'] == 2 and s.frames['fp'] == 0


def test_quantile_suggestion_by_hand():
    scores = np.linspace(0.0, 1.0, 101)            # p99 (linear) = 0.99
    s = suggest_from_normal(STOP, scores, quantile=99, margin=0.05)
    assert s.method == 'quantile'
    assert s.enter == pytest.approx(1.04) and s.exit == pytest.approx(1.015)
    assert s.normal_level == pytest.approx(0.99)
    assert s.frames == {'normal_frames': 101, 'would_fire': 0}


def test_quantile_suggestion_is_clamped_to_what_the_policy_accepts():
    s = suggest_from_normal(SOFT, np.linspace(0.0, 1.0, 101), quantile=99, margin=0.05)
    assert s.enter == 1.0 and s.exit == 1.0        # softmax mass: at most 1
    s = suggest_from_normal(SOFT, np.zeros(10), quantile=99, margin=0.0)
    assert s.enter > 0.0                           # softmax enter must be > 0


def test_quantile_suggestion_for_a_memory_rule():
    sims = np.linspace(0.8, 1.0, 21)
    s = suggest_from_normal(HOVER, sims, quantile=100, margin=0.05)
    assert s.enter == pytest.approx(0.75) and s.exit == pytest.approx(0.775)
    s = suggest_from_normal(HOVER, [float('nan')] * 3 + [0.9], quantile=100, margin=0.1)
    assert s.enter == pytest.approx(0.8)
    with pytest.raises(ValueError, match='no finite scores'):
        suggest_from_normal(HOVER, [float('nan')] * 3)


def test_suggestion_snippet_merges_into_a_valid_policy():
    a = suggest_from_normal(STOP, np.linspace(0.0, 0.2, 21), quantile=100, margin=0.1)
    b = suggest_from_normal(HOVER, np.linspace(0.9, 1.0, 11), quantile=100, margin=0.05)
    text = suggestion_yaml([a, b], header='test')
    snippet = yaml.safe_load(text)
    assert snippet == {'actions': [{'name': 'STOP', 'enter': 0.3, 'exit': 0.25}],
                       'temporal': [{'name': 'HOVER', 'below_similarity': 0.85, 'exit_similarity': 0.875}]}
    merged = json.loads(json.dumps(POLICY))
    for section in ('actions', 'temporal'):
        for patch in snippet[section]:
            rule = next(r for r in merged[section] if r['name'] == patch['name'])
            rule.update(patch)
    spec = parse_policy(merged)                    # the policy file's validation accepts it
    assert spec.actions[0].enter == 0.3 and spec.temporal[0].below_similarity == 0.85


def test_which_rules_are_calibrated():
    labels = parse_labels({'spans': [{'start': 0, 'end': 1}]})
    assert choose_rules(SPEC, labels, None) == ['STOP']          # highest priority
    assert choose_rules(SPEC, parse_labels({'spans': [], 'action': 'HOVER'}), None) == ['HOVER']
    assert choose_rules(SPEC, None, None) == ['STOP', 'SOFT', 'HOVER']
    with pytest.raises(ValueError, match='no rule NOPE'):
        choose_rules(SPEC, None, ['NOPE'])


# -- per-prompt scores from the engine ---------------------------------------------------------------------------
AXES = {'a person': [1, 0, 0, 0], 'a car': [0, 0, 0, 1], 'an empty lawn': [0, 1, 0, 0]}


def fake_embed(texts):
    return np.array([AXES[t] for t in texts], dtype=np.float32)


def unit(person=0.0, lawn=0.0, car=0.0):
    return np.array([person, lawn, math.sqrt(1 - person ** 2 - lawn ** 2 - car ** 2), car])


def test_prompt_scores_are_the_engines_scores_by_hand():
    tracer = ScoreTracer(SPEC, fake_embed)
    # Region: person 0.6, lawn 0.2, car 0.1 -> margins: 'a person' 0.6 - 0.2 = 0.4, 'a car' 0.1 - 0.2 = -0.1.
    frame = FrameEmbedding(unit(car=0.3), {'near': RegionVector(unit(person=0.6, lawn=0.2, car=0.1))})
    r = tracer.observe(10.0, 0, frame)
    assert r.prompts['STOP'] == pytest.approx({'a person': 0.4, 'a car': -0.1})
    assert r.rules['STOP'] == pytest.approx(0.4)                 # margin: the best prompt's
    # Softmax over [car 0.3, lawn 0.0] / 0.1 on the full frame: e^3 / (e^3 + 1).
    assert r.rules['SOFT'] == pytest.approx(math.exp(3) / (math.exp(3) + 1))
    assert r.action == 'STOP'                                    # 0.4 >= enter 0.3
    assert math.isnan(r.rules['HOVER'])                          # no scene 2 s ago yet


def test_memory_rule_scores_come_from_the_memory_window():
    tracer = ScoreTracer(SPEC, fake_embed)
    region = {'near': RegionVector(unit(lawn=0.9))}
    first = unit(person=0.8)
    second = unit(car=0.8)
    tracer.observe(0.0, 0, FrameEmbedding(first, region))
    r = tracer.observe(2.0, 1, FrameEmbedding(second, region))
    assert r.rules['HOVER'] == pytest.approx(float(first @ second), abs=1e-6)   # the scene 2.0 s ago
    assert r.action == 'HOVER'                                   # similarity 0.36 < 0.8


# -- the real model on the real video -----------------------------------------------------------------------------
@pytest.mark.slow
def test_real_model_on_a_slice_of_the_video(video_path, tmp_path, capsys):
    out = tmp_path / 'cal'
    code = main([video_path, '--labels', str(LABELS), '--out', str(out), '--start-s', '47', '--end-s', '57',
                 '--step', '2', '--quiet'])
    assert code == 0
    printed = capsys.readouterr().out
    snippet = yaml.safe_load(printed)
    stop = snippet['actions'][0]
    assert stop['name'] == 'STOP' and stop['exit'] <= stop['enter']
    png = (out / 'calibration.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 10_000
    with open(out / 'scores.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 50                                       # 10 s at 10 fps, every 2nd frame
    times = [float(r['time_s']) for r in rows]
    assert times[0] == pytest.approx(47.0) and times[-1] == pytest.approx(56.8)
    prompt_cols = [k for k in rows[0] if k.startswith('prompt:STOP:')]
    assert len(prompt_cols) == 3
    for r in rows:   # a margin rule's score is its best prompt's score
        assert float(r['score:STOP']) == pytest.approx(max(float(r[c]) for c in prompt_cols), abs=1e-6)
    # The hand labels: a person is in the near zone from 50.4 s; ambiguous edges left out.
    labels = load_labels(LABELS)
    inside = [float(r['score:STOP']) for r, t in zip(rows, times)
              if any(s.start <= t <= s.end for s in labels.spans)
              and not any(a.start <= t <= a.end for a in labels.ambiguous)]
    outside = [float(r['score:STOP']) for r, t in zip(rows, times) if t < labels.spans[0].start
               and not any(a.start <= t <= a.end for a in labels.ambiguous)]
    assert len(inside) > 20 and len(outside) > 10
    assert np.mean(inside) > np.mean(outside) + 0.1
    doc = json.loads((out / 'scores.json').read_text())
    assert doc['frames'] == 50 and doc['suggestions'][0]['rule'] == 'STOP'
    assert doc['suggestions'][0]['frames']['fp'] == 0            # nothing fires on the empty lawn
