"""Replay evaluation metrics (vidaction_ros.tools.eval_metrics): hand-built action sequences against hand-built
spans. Every expected number below is worked out by hand from the matching rules in the module docstring.

Frames are on a 0.5 s grid unless a test says otherwise, so "active from 12.0 to 15.0" is 7 frames.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from vidaction_ros.tools.eval_metrics import (IGNORED, NEGATIVE, POSITIVE, Episode, LabelsError, Span, Tolerances,
                                        confusion, episodes, event_metrics, frame_labels, frame_metrics,
                                        latency_table, load_labels, parse_labels, percentiles)

LABELS = Path(__file__).resolve().parent.parent / 'data' / 'vtest_near_zone_labels.yaml'


def grid(t0=0.0, t1=30.0, dt=0.5):
    return [round(t0 + i * dt, 6) for i in range(int(round((t1 - t0) / dt)) + 1)]


def active_between(times, *ranges):
    """Active on frames whose time lies in any [lo, hi] (closed)."""
    return [any(lo - 1e-9 <= t <= hi + 1e-9 for lo, hi in ranges) for t in times]


T = grid()
SPAN = Span(10.0, 20.0)


# -- episodes -------------------------------------------------------------------------------------------------
def test_episodes_are_maximal_runs():
    times = [0, 1, 2, 3, 4, 5, 6]
    active = [False, True, True, False, True, False, True]
    assert episodes(times, active) == [Episode(1, 2, 2), Episode(4, 4, 1), Episode(6, 6, 1)]


def test_episodes_of_nothing_and_everything():
    assert episodes([], []) == []
    assert episodes([0, 1, 2], [False] * 3) == []
    assert episodes([0, 1, 2], [True] * 3) == [Episode(0, 2, 3)]


@pytest.mark.parametrize('times', [[0, 1, 1, 2], [0, 2, 1], [0, float('nan')]])
def test_times_must_be_finite_and_strictly_increasing(times):
    with pytest.raises(ValueError):
        episodes(times, [False] * len(times))


def test_lengths_must_match():
    with pytest.raises(ValueError, match='3 frame times but 2'):
        episodes([0, 1, 2], [True, False])


# -- steadiness: toggles, frame recall after the first firing, release ------------------------------------------
def test_a_steady_span_has_no_toggles_and_a_measured_release():
    # Active 11.0..21.0 on the 0.5 s grid; the span ends at 20.0; first inactive frame 21.5.
    m = event_metrics(T, active_between(T, (11.0, 21.0)), [SPAN])
    sp = m.spans[0]
    assert sp.toggles == 0 and m.toggles == 0
    assert sp.frame_recall_after_first == 1.0          # 11.0..20.0: 19 frames, all active
    assert sp.release_s == 21.5 and sp.release_delay_s == 1.5
    assert m.release_delay_s == {'mean': 1.5, 'min': 1.5, 'max': 1.5, 'n': 1}


def test_flapping_inside_a_span_counts_toggles_and_lost_frames():
    # STOP -> CONTINUE -> STOP twice inside the span: onsets 11.0, 14.0, 17.0 -> 2 toggles.
    # Frames 11.0..20.0 = 19; active 4 + 4 + 3 = 11 of them -> recall 11/19. Released at 18.5 (last active
    # frame 18.0): 1.5 s before the span ended.
    active = active_between(T, (11.0, 12.5), (14.0, 15.5), (17.0, 18.0))
    sp = event_metrics(T, active, [SPAN]).spans[0]
    assert sp.toggles == 2
    assert sp.frame_recall_after_first == pytest.approx(11 / 19)
    assert sp.release_s == 18.5 and sp.release_delay_s == -1.5


def test_onsets_after_the_span_are_not_toggles_and_a_missed_span_has_no_steadiness():
    # A re-fire at 21.0 (after the end, inside after_s) is a refire for the event metrics, not a toggle.
    m = event_metrics(T, active_between(T, (12.0, 20.0), (21.0, 21.0)), [SPAN])
    assert m.spans[0].toggles == 0 and m.refires == 1 and m.spans[0].release_s == 20.5
    missed = event_metrics(T, [False] * len(T), [SPAN]).spans[0]
    assert (missed.toggles, missed.frame_recall_after_first, missed.release_s) == (0, None, None)


def test_still_active_when_the_recording_ends_has_no_release():
    sp = event_metrics(T, active_between(T, (12.0, 30.0)), [SPAN]).spans[0]
    assert sp.release_s is None and sp.release_delay_s is None and sp.toggles == 0


# -- event metrics --------------------------------------------------------------------------------------------
def test_fires_inside_the_span_late():
    m = event_metrics(T, active_between(T, (12.0, 15.0)), [SPAN])
    assert (m.tp, m.fn, m.fp) == (1, 0, 0)
    assert m.precision == 1.0 and m.recall == 1.0 and m.f1 == 1.0
    assert m.onsets == [12.0]
    assert m.spans[0].first_fire_s == 12.0
    assert m.spans[0].lead_s == pytest.approx(-2.0)        # fired 2 s after the labelled start
    assert m.lead_time_s == {'mean': -2.0, 'median': -2.0, 'min': -2.0, 'max': -2.0, 'n': 1}
    assert not m.spans[0].truncated


def test_fires_before_the_span_within_tolerance_is_a_detection_with_positive_lead():
    m = event_metrics(T, active_between(T, (9.5, 11.0)), [SPAN], tol=Tolerances(before_s=1.0))
    assert (m.tp, m.fp) == (1, 0)
    assert m.spans[0].lead_s == pytest.approx(0.5)
    assert m.false_alarms == []


def test_fires_too_early_is_a_false_alarm_and_a_miss():
    # 8.0-8.5 s: outside [10 - 1, 20 + 2]; nothing active in the detection window [9, 20].
    m = event_metrics(T, active_between(T, (8.0, 8.5)), [SPAN], tol=Tolerances(before_s=1.0))
    assert (m.tp, m.fn, m.fp) == (0, 1, 1)
    assert m.false_alarms == [8.0]
    assert m.precision == 0.0 and m.recall == 0.0 and m.f1 == 0.0
    assert m.spans[0].detected is False and m.spans[0].lead_s is None
    assert m.lead_time_s == {}


def test_two_spans_one_firing():
    spans = [Span(5.0, 8.0), Span(20.0, 25.0)]
    m = event_metrics(T, active_between(T, (21.0, 22.0)), spans)
    assert (m.tp, m.fn, m.fp) == (1, 1, 0)
    assert m.precision == 1.0 and m.recall == 0.5
    assert m.f1 == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert [s.detected for s in m.spans] == [False, True]
    assert m.spans[1].lead_s == pytest.approx(-1.0)


def test_no_events_and_no_spans_leave_precision_and_recall_undefined():
    m = event_metrics(T, [False] * len(T), [])
    assert (m.tp, m.fn, m.fp) == (0, 0, 0)
    assert m.precision is None and m.recall is None and m.f1 is None


def test_spans_but_never_fires():
    m = event_metrics(T, [False] * len(T), [SPAN])
    assert (m.tp, m.fn, m.fp) == (0, 1, 0)
    assert m.precision is None and m.recall == 0.0 and m.f1 is None


def test_fires_without_any_span_counts_every_onset_as_a_false_alarm():
    m = event_metrics(T, active_between(T, (3.0, 4.0), (12.0, 12.0)), [])
    assert m.false_alarms == [3.0, 12.0]
    assert (m.tp, m.fp) == (0, 2)
    assert m.precision == 0.0 and m.recall is None and m.f1 is None


def test_chatter_inside_a_span_is_refires_not_false_alarms():
    m = event_metrics(T, active_between(T, (11.0, 12.0), (14.0, 14.5), (17.0, 19.0)), [SPAN])
    assert m.onsets == [11.0, 14.0, 17.0]
    assert (m.tp, m.fp, m.refires) == (1, 0, 2)


def test_active_after_the_end_within_after_s_is_not_a_false_alarm():
    # Fired inside the span, held 1.5 s past its end: one episode, fine.
    m = event_metrics(T, active_between(T, (18.0, 21.5)), [SPAN], tol=Tolerances(after_s=2.0))
    assert (m.tp, m.fp) == (1, 0)
    # A new onset 1.5 s after the end: explained (within end + after_s), yet it is no detection of the span.
    m = event_metrics(T, active_between(T, (21.5, 22.0)), [SPAN], tol=Tolerances(after_s=2.0))
    assert (m.tp, m.fn, m.fp) == (0, 1, 0)
    # 2.5 s after the end: a false alarm.
    m = event_metrics(T, active_between(T, (22.5, 23.0)), [SPAN], tol=Tolerances(after_s=2.0))
    assert m.false_alarms == [22.5]


def test_ambiguous_spans_excuse_onsets_but_are_not_events():
    amb = [Span(25.0, 26.0)]
    m = event_metrics(T, active_between(T, (12.0, 13.0), (25.5, 26.0)), [SPAN], amb)
    assert (m.tp, m.fn, m.fp) == (1, 0, 0)
    assert m.recall == 1.0                               # only the real span is counted


def test_a_late_first_firing_beyond_max_delay_is_a_miss_not_a_false_alarm():
    m = event_metrics(T, active_between(T, (14.0, 16.0)), [SPAN], tol=Tolerances(max_delay_s=3.0))
    assert (m.tp, m.fn, m.fp) == (0, 1, 0)
    m = event_metrics(T, active_between(T, (13.0, 16.0)), [SPAN], tol=Tolerances(max_delay_s=3.0))
    assert (m.tp, m.fn) == (1, 0) and m.spans[0].lead_s == pytest.approx(-3.0)


def test_span_outside_the_recording_is_not_evaluated():
    spans = [SPAN, Span(100.0, 110.0)]
    m = event_metrics(T, active_between(T, (12.0, 13.0)), spans)
    assert [s.evaluated for s in m.spans] == [True, False]
    assert (m.tp, m.fn) == (1, 0) and m.recall == 1.0


def test_recording_that_starts_inside_the_window_marks_the_span_truncated():
    times = grid(9.5, 30.0)
    m = event_metrics(times, active_between(times, (9.5, 12.0)), [SPAN], tol=Tolerances(before_s=1.0))
    assert m.spans[0].truncated
    assert m.spans[0].lead_s == pytest.approx(0.5)       # a bound: it may have been active earlier


def test_an_episode_begun_before_the_window_is_a_false_alarm_yet_covers_the_span():
    m = event_metrics(T, active_between(T, (5.0, 12.0)), [SPAN], tol=Tolerances(before_s=1.0))
    assert m.false_alarms == [5.0]                        # it fired 5 s early
    assert m.spans[0].detected and m.spans[0].first_fire_s == 9.0
    assert m.spans[0].lead_s == pytest.approx(1.0)        # capped at before_s
    assert m.precision == 0.5 and m.recall == 1.0


def test_like_the_committed_bag():
    """Frames 46.0-61.8 s at 5 fps, labelled span 50.4-73.3 s, STOP from 53.0 s on and off (hold included)."""
    times = [round(46.0 + 0.2 * i, 6) for i in range(80)]
    active = active_between(times, (53.0, 53.8), (54.4, 55.6), (57.4, 58.2), (58.6, 59.6))
    amb = [Span(50.2, 50.6), Span(72.8, 73.6)]
    m = event_metrics(times, active, [Span(50.4, 73.3)], amb, Tolerances(before_s=1.0, after_s=2.0))
    assert (m.tp, m.fn, m.fp, m.refires) == (1, 0, 0, 3)
    assert m.spans[0].lead_s == pytest.approx(-2.6)
    assert m.precision == 1.0 and m.recall == 1.0


def test_tolerances_are_validated():
    with pytest.raises(ValueError, match='before_s'):
        Tolerances(before_s=-1.0)
    with pytest.raises(ValueError, match='max_delay_s'):
        Tolerances(max_delay_s=float('nan'))


# -- frame level ----------------------------------------------------------------------------------------------
def test_frame_labels_with_ambiguous_winning():
    times = [0.0, 1.0, 2.0, 3.0, 4.0]
    y = frame_labels(times, [Span(1.0, 3.0)], [Span(2.5, 4.0)])
    assert y.tolist() == [NEGATIVE, POSITIVE, POSITIVE, IGNORED, IGNORED]


def test_confusion_by_hand():
    #            pos  pos  pos  neg  neg  neg  neg  ign
    labels = [1, 1, 1, 0, 0, 0, 0, -1]
    predicted = [1, 1, 0, 1, 0, 0, 0, 1]
    c = confusion(predicted, labels)
    assert (c['tp'], c['fp'], c['fn'], c['tn'], c['ignored']) == (2, 1, 1, 3, 1)
    assert c['precision'] == pytest.approx(2 / 3) and c['recall'] == pytest.approx(2 / 3)
    assert c['f1'] == pytest.approx(2 / 3) and c['fpr'] == pytest.approx(1 / 4)


def test_frame_metrics_uses_the_spans():
    times = [0.0, 1.0, 2.0, 3.0]
    c = frame_metrics(times, [False, True, True, True], [Span(1.0, 2.0)])
    assert (c['tp'], c['fp'], c['fn'], c['tn']) == (2, 1, 0, 1)


# -- latency --------------------------------------------------------------------------------------------------
def test_percentiles_ignore_not_measured_values():
    values = list(range(1, 101)) + [float('nan'), None]
    p = percentiles(values)
    assert p['n'] == 100
    assert p['p50'] == pytest.approx(50.5)               # linear interpolation between 50 and 51
    assert p['p99'] == pytest.approx(99.01)
    assert p['max'] == 100 and p['mean'] == pytest.approx(50.5)


def test_percentiles_of_nothing():
    p = percentiles([float('nan')])
    assert p['n'] == 0 and p['p50'] is None and p['max'] is None


def test_latency_table_per_stage():
    rows = [{'embed_ms': 10.0, 'capture_to_decide_ms': 20.0}, {'embed_ms': 30.0, 'capture_to_decide_ms': 40.0}]
    table = latency_table(rows, ('embed_ms', 'capture_to_decide_ms'))
    assert table['embed_ms']['p50'] == 20.0 and table['capture_to_decide_ms']['max'] == 40.0


# -- labels ---------------------------------------------------------------------------------------------------
def test_the_committed_labels_load():
    labels = load_labels(LABELS)
    assert [(s.start, s.end) for s in labels.spans] == [(50.4, 73.3)]
    assert [(s.start, s.end) for s in labels.ambiguous] == [(50.2, 50.6), (72.8, 73.6)]
    assert labels.action is None and labels.source == str(LABELS)


@pytest.mark.parametrize('text, fragment', [
    ('video: x\n', 'spans: expected a list'),
    ('spans: {start: 1, end: 2}\n', 'spans: expected a list'),
    ('spans:\n  - {start: 1}\n', 'spans[0].end: expected a finite number'),
    ('spans:\n  - {start: x, end: 2}\n', 'spans[0].start: expected a finite number'),
    ('spans:\n  - {start: 3, end: 2}\n', 'spans[0].end: expected end >= start'),
    ('spans: []\nambiguous:\n  - [1, 2]\n', 'ambiguous[0]: expected a mapping'),
    ('spans: []\naction: 3\n', 'action: expected an action name'),
    ('- 1\n', '(top level)'),
    ('spans: [\n', 'not valid YAML'),
    ('spans: !!python/object/apply:os.system [echo hi]\n', 'not valid YAML'),   # safe loading only
])
def test_bad_labels_name_the_file_and_field(tmp_path, text, fragment):
    f = tmp_path / 'labels.yaml'
    f.write_text(text)
    with pytest.raises(LabelsError) as err:
        load_labels(f)
    assert str(f) in str(err.value) and fragment in str(err.value), str(err.value)


def test_spans_are_sorted_and_action_kept():
    labels = parse_labels({'spans': [{'start': 5, 'end': 6}, {'start': 1, 'end': 2, 'note': 'n'}],
                           'action': 'STOP'})
    assert [s.start for s in labels.spans] == [1.0, 5.0] and labels.spans[0].note == 'n'
    assert labels.action == 'STOP'
