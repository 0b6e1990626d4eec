"""bench/quality.py's suite: every case is runnable (clip installed, policy and labels valid), thresholds are
shared, and the summary reads the evaluation report the way its columns say. The replays themselves are the
bench (minutes per clip), not a test."""
from __future__ import annotations


import pytest
import yaml

from conftest import load_bench
from vidaction_ros.policy import load_policy
from vidaction_ros.tools.eval_metrics import load_labels

RESERVED = ('bikes.mp4', 'box.mp4', 'cup.mp4')     # kept out of the suite and out of tuning


@pytest.fixture(scope='module')
def quality():
    return load_bench('quality')


@pytest.fixture(scope='module')
def suite(quality):
    return quality.load_suite()


def test_every_case_has_an_installed_clip_a_valid_policy_and_labels(quality, suite):
    cases = suite['cases']
    assert len(cases) >= 4 and {c['split'] for c in cases} == {'tune', 'holdout'}
    for case in cases:
        clip = quality.clip_path(case['clip'])
        assert clip.is_file() and clip.name not in RESERVED, case['name']
        policy = load_policy(quality.SUITE.parent / case['policy'])
        labels = load_labels(quality.SUITE.parent / case['labels'])
        assert labels.spans, case['name']
        assert case['action'] in [r.name for r in policy.actions], case['name']


def test_every_case_gets_the_shared_thresholds(quality, suite, tmp_path):
    shared = suite['thresholds']['margin']
    for case in suite['cases']:
        spec = load_policy(quality.shared_policy(case, suite['thresholds'], tmp_path))
        for rule in spec.actions:
            assert (rule.enter, rule.exit) == (shared['enter'], shared['exit']), case['name']


def test_the_summary_reads_the_report_columns(quality):
    # A hand-made report in vidaction-eval's shape: two spans, one detected with one toggle.
    report = {'stream': {'frames_decided': 100}, 'events': {'STOP': {
        'precision': 0.5, 'recall': 0.5, 'tp': 1, 'fp': 1, 'fn': 1, 'lead_time_s': {'mean': -0.4},
        'spans': [{'evaluated': True, 'detected': True, 'toggles': 1, 'frame_recall_after_first': 0.8,
                   'release_delay_s': 0.6},
                  {'evaluated': True, 'detected': False, 'toggles': 0, 'frame_recall_after_first': None,
                   'release_delay_s': None}]}}}
    row = quality.summarise({'name': 'x', 'split': 'holdout', 'clip': {}, 'action': 'STOP'}, report, 1.0)
    assert (row['spans'], row['toggles'], row['max_toggles_per_span']) == (2, 1, 1)
    assert (row['frame_recall_after_first'], row['release_delay_s'], row['lead_s']) == (0.8, 0.6, -0.4)
    assert row['meets_targets'] is False                       # precision and recall 0.5 < 0.9
    report['events']['STOP'].update(precision=1.0, recall=1.0)
    assert quality.summarise({'name': 'x', 'split': 'tune', 'clip': {}, 'action': 'STOP'}, report, 1.0)['meets_targets']


def test_labels_say_how_they_were_made(quality, suite):
    for case in suite['cases']:
        data = yaml.safe_load((quality.SUITE.parent / case['labels']).read_text())
        assert 'by eye' in data['method'] and 'no detector' in data['method'], case['name']
