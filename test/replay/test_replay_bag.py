"""Replay of the committed bag test/data/vtest_replay/ (80 CompressedImage frames, media time 46.0-61.8 s at
5 fps, made by test/data/make_vtest_replay.sh) through the real pipeline and the real model.

1. `vidaction-eval` (lock-step: every frame, header stamps) with the hand labels: what fires and when, the
   Action bag it writes, the report.
2. `vidaction-bag play` (real time, 5 Hz) -> the camera subscribed to /image_raw/compressed (source:=topic),
   live mode, with a real subscriber in this process.

Expected results come from the hand-made labels test/data/vtest_near_zone_labels.yaml (a person in the near
zone 50.4-73.3 s, judged by eye) and the tolerances of the end-to-end test on the video
(test/integration/test_pipeline_on_video.py), never from the code's own output. The bag ends at 61.8 s,
before the labelled span does.
"""
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bag_helpers import REPLAY_BAG, start_player
from ros_helpers import ActionCollector, stamp_s, start_pipeline, stop_group
from vidaction_ros.ingest import bags as bag_io
from vidaction_ros.tools.eval_metrics import load_labels
from vidaction_ros.tools.action_bags import read_action_bag

from conftest import DATA

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LABELS = DATA / 'vtest_near_zone_labels.yaml'
FRAMES = 80
# Same tolerances as the end-to-end test on the video (see there why): the detector needs a whole body, so
# STOP may come up to 3 s after the labelled entry, and never more than 1 s before it.
ONSET_TOLERANCE_S = 3.0
EDGE_TOLERANCE_S = 1.0
LATENCY_FIELDS = ('capture_to_embed_ms', 'embed_ms', 'embed_to_decide_ms', 'capture_to_decide_ms')


@pytest.fixture(scope='module')
def bag_stamps():
    assert REPLAY_BAG.is_dir(), f'replay fixture missing: {REPLAY_BAG} (test/data/make_vtest_replay.sh)'
    return [f.stamp_ns for f in bag_io.read_frames(str(REPLAY_BAG))]


@pytest.fixture(scope='module')
def labels():
    return load_labels(LABELS)


# -- 1. vidaction-eval, lock-step --------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def evaluation(tmp_path_factory):
    # Relative paths from the caller's folder, as a user types them (`cd` into the folder holding the bag): the
    # pipeline child runs elsewhere, so every path must be resolved against this folder, not its own.
    here = tmp_path_factory.mktemp('eval')
    (here / 'bag').symlink_to(REPLAY_BAG, target_is_directory=True)
    (here / 'labels.yaml').symlink_to(LABELS)
    out = here / 'out'
    proc = subprocess.run([sys.executable, '-m', 'vidaction_ros.tools.evaluate', 'bag', '--labels', 'labels.yaml',
                           '--out', 'out', '--quiet'], cwd=here, env=dict(os.environ),
                          capture_output=True, text=True, timeout=900)
    log = (out / 'pipeline.log').read_text() if (out / 'pipeline.log').exists() else ''
    assert proc.returncode == 0, f'vidaction-eval failed:\n{proc.stderr[-3000:]}\n{proc.stdout[-2000:]}\n{log[-3000:]}'
    report = json.loads((out / 'report.json').read_text())
    return out, report, proc.stdout


def test_every_frame_got_exactly_one_action_in_order_with_the_bags_stamps(evaluation, bag_stamps):
    out, report, _ = evaluation
    actions = read_action_bag(out / 'actions')
    assert len(bag_stamps) == FRAMES
    assert len(actions) == FRAMES == report['actions_bag_count']
    assert [a.frame_sequence for a in actions] == list(range(FRAMES))
    assert [a.header.stamp.sec * 1_000_000_000 + a.header.stamp.nanosec for a in actions] == bag_stamps
    assert bag_stamps[0] == 46_000_000_000 and bag_stamps[-1] == 61_800_000_000
    s = report['stream']
    assert (s['frames_in_bag'], s['frames_decided'], s['duplicates'], s['failsafes']) == (FRAMES, FRAMES, 0, 0)
    assert s['in_order'] and s['complete'] and s['missing'] == []


def test_stop_fires_within_the_tolerances_of_the_labelled_entry(evaluation, labels):
    out, _, _ = evaluation
    actions = read_action_bag(out / 'actions')
    start = labels.spans[0].start                                  # 50.4 s, the hand label
    stops = [stamp_s(a) for a in actions if a.action == 'STOP']
    assert stops, 'STOP never fired'
    assert start - EDGE_TOLERANCE_S <= stops[0] <= start + ONSET_TOLERANCE_S, stops[0]
    # Before the labelled entry (less the edge tolerance) only pedestrians on the road: CONTINUE throughout.
    before = [a for a in actions if stamp_s(a) < start - EDGE_TOLERANCE_S]
    assert len(before) == 17 and {a.action for a in before} == {'CONTINUE'}    # 46.0 .. 49.2 s
    for a in actions:
        if a.action == 'STOP' and a.trigger == 'prompt':
            assert a.score >= a.threshold and a.region == 'near_zone' and a.matched_prompt


def test_report_has_event_metrics_from_the_labels(evaluation, labels):
    _, report, stdout = evaluation
    ev = report['events']['STOP']
    assert report['evaluated_actions'] == ['STOP'] and Path(report['labels']).resolve() == LABELS.resolve()
    # One labelled event, detected (STOP within 3 s of 50.4 s) and no STOP outside it (the bag ends inside the
    # span, and nothing fires before 49.4 s): precision and recall are 1 by the labels alone.
    assert (ev['tp'], ev['fn'], ev['fp']) == (1, 0, 0)
    assert ev['precision'] == 1.0 and ev['recall'] == 1.0 and ev['f1'] == 1.0
    span = ev['spans'][0]
    assert (span['start'], span['end']) == (labels.spans[0].start, labels.spans[0].end)
    assert span['evaluated'] and span['detected'] and not span['truncated']
    assert -ONSET_TOLERANCE_S <= span['lead_s'] <= EDGE_TOLERANCE_S
    assert span['lead_s'] == pytest.approx(labels.spans[0].start - span['first_fire_s'])
    assert ev['tolerances'] == {'before_s': 1.0, 'after_s': 2.0, 'max_delay_s': None}
    frames = report['frames']['STOP']
    assert frames['fp'] == 0 and frames['tp'] + frames['fn'] + frames['fp'] + frames['tn'] + frames['ignored'] == FRAMES
    # STOP on the labelled frames, plus at most the ambiguous entry frames (50.2-50.6 s: the first visible leg).
    assert frames['tp'] <= report['decisions']['STOP'] <= frames['tp'] + frames['ignored']
    # Every rule re-scored on every frame from the memory contexts, agreeing with what the policy node decided.
    assert report['rescored'] == {'frames': FRAMES, 'agree_with_actions': FRAMES}
    assert '## STOP' in stdout and 'precision 1.000' in stdout


def test_report_has_latency_per_stage(evaluation):
    _, report, _ = evaluation
    lat = report['latency_ms']
    assert set(lat) == set(LATENCY_FIELDS)
    for name in LATENCY_FIELDS:
        st = lat[name]
        assert st['n'] == FRAMES
        assert 0 <= st['p50'] <= st['p90'] <= st['p99'] <= st['max'], (name, st)
    # The stages add up: capture -> Action is at least the embedding alone.
    assert lat['capture_to_decide_ms']['p50'] >= lat['embed_ms']['p50']


def test_report_files(evaluation):
    out, report, _ = evaluation
    png = (out / 'timeline.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 20_000
    md = (out / 'report.md').read_text()
    assert 'Latency per stage' in md and 'lead time' in md and '50.4–73.3 s' in md
    assert set(report['files']) == {'actions_bag', 'report_json', 'report_md', 'report_html', 'timeline', 'pipeline_log'}
    assert report['bag_start_s'] == 46.0 and report['bag_end_s'] == pytest.approx(61.8)
    # The Action bag carries our type with rosidl's type hash (read from the installed interface description).
    meta = (out / 'actions' / 'metadata.yaml').read_text()
    assert 'type: vidaction_ros/msg/Action' in meta
    share = json.loads(open(_installed('msg/Action.json')).read())
    hash_ = share['type_hashes'][0]['hash_string']
    assert hash_.startswith('RIHS01_') and hash_ in meta


def _installed(rel: str) -> str:
    from vidaction_ros.paths import share_dir
    return str(share_dir() / rel)


# -- 2. bag play -> camera on the topic, real time -------------------------------------------------------------------
def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)   # polling the ROS graph: there is no graph-change event in rclpy to wait on
    return predicate()


def test_bag_play_into_the_camera_topic_keeps_the_bags_stamps(context, tmp_path, bag_stamps, labels):
    collector = ActionCollector(context=context)
    log = tmp_path / 'pipeline.log'
    player_log = tmp_path / 'player.log'
    # Live (not lock-step): the camera subscribes to the player's topic. Bag stamps are media time (1970), so the
    # wall-clock watchdog and the memory's wall-clock stamp check are off, as for any replay without /clock.
    pipeline = start_pipeline('--mode', 'composed', '--source', 'topic', '--image_topic', '/image_raw/compressed',
                              '--set', 'policy.watchdog_deadline_s=0.0', '--set', 'memory.stamps_are_wall_clock=false',
                              '--set', 'policy.log_decisions=changes', log_path=str(log))
    player = None
    try:
        node = collector.node
        ready = _wait(lambda: node.count_publishers('action') >= 1
                      and node.count_subscribers('/image_raw/compressed') >= 1
                      and node.count_subscribers('camera/frame') >= 1, timeout=600)
        assert ready, f'pipeline did not come up:\n{log.read_text()[-3000:]}'
        player = start_player(str(REPLAY_BAG), '--wait-for-subscribers', '1', log_path=str(player_log))
        assert player.wait(300) == 0, player_log.read_text()
        # The last frames are still in the pipeline when the player exits: wait until the Actions stop.
        count = -1
        while count != len(collector.messages):
            count = len(collector.messages)
            collector.wait_for(lambda m: len(m) > count, timeout=3.0)
    finally:
        if player is not None and player.poll() is None:
            stop_group(player)
        code = stop_group(pipeline)
        collector.close()
    actions = [a for a in collector.messages if a.trigger != 'watchdog']
    text = log.read_text()
    assert code == 0, text[-3000:]
    # Most frames decided (live mode may drop a frame while the embedder is busy; the gate skips none at 5 fps
    # of a street scene with people walking, but the count is not the point here).
    assert len(actions) >= FRAMES // 2, f'{len(actions)} Actions; pipeline log:\n{text[-3000:]}'
    stamps = [stamp_s(a) for a in actions]
    bag_s = [s / 1e9 for s in bag_stamps]
    for t in stamps:   # the bag's header stamps, not the replay's wall clock
        assert any(abs(t - b) < 1e-6 for b in bag_s), t
    assert stamps == sorted(stamps) and 46.0 - 1e-6 <= stamps[0] and stamps[-1] <= 61.8 + 1e-6
    start = labels.spans[0].start
    stops = [t for a, t in zip(actions, stamps) if a.action == 'STOP']
    assert stops and min(stops) >= start, f'STOP at {stops[:5]}'     # not before the first visible leg
    assert all(a.action == 'CONTINUE' for a, t in zip(actions, stamps) if t < start - EDGE_TOLERANCE_S)
    assert all(math.isfinite(a.capture_to_decide_ms) and a.capture_to_decide_ms > 0 for a in actions)


# -- report.html in a real browser -------------------------------------------------------------------------------
CHROMIUM = next((c for c in ('chromium', 'chromium-browser', 'google-chrome') if shutil.which(c)), None)


def chromium(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    # A profile of its own per call: a second browser must not attach to a running one.
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', f'--user-data-dir={profile}',
                               '--allow-file-access-from-files', *args], capture_output=True, text=True,
                              timeout=timeout)


@pytest.mark.skipif(CHROMIUM is None, reason='needs Debian chromium (scripts/setup_env.sh installs it)')
def test_report_html_opens_in_a_browser_with_its_images_and_the_reports_rows(evaluation):
    import re
    out, report, _ = evaluation
    page = out / 'report.html'
    assert page.is_file() and report['files']['report_html'].endswith('report.html')
    dom = chromium('--virtual-time-budget=10000', '--dump-dom', page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r'<body[^>]*>', dom.stdout).group(0)
    total = int(re.search(r'data-images-total="(\d+)"', body).group(1))
    loaded = int(re.search(r'data-images-loaded="(\d+)"', body).group(1))
    # The timeline and one thumbnail per onset, miss and false alarm, every one decoded by the browser.
    assert total == 1 + len(report['thumbnails']) and loaded == total, body
    # The labelled STOP span was detected (the event metrics' test above): its onset is among the thumbnails.
    assert any(t['kind'] == 'onset' and t['action'] == 'STOP' for t in report['thumbnails'])
    # The span rows the browser shows are report.json's spans, in order.
    rows = re.findall(r'<tr data-action="STOP" class="span">(.*?)</tr>', dom.stdout)
    spans = report['events']['STOP']['spans']
    assert len(rows) == len(spans)
    for row, span in zip(rows, spans):
        cells = re.findall(r'<td>(.*?)</td>', row)
        assert cells[0] == f'{span["start"]:.1f}–{span["end"]:.1f} s'
        assert cells[1] == ('yes' if span['detected'] else 'no')
    latency_rows = re.findall(r'<tr class="latency">(.*?)</tr>', dom.stdout)
    assert [re.findall(r'<td>(.*?)</td>', r)[0] for r in latency_rows] == list(report['latency_ms'])
    shot = out / 'report.png'
    result = chromium('--virtual-time-budget=10000', '--window-size=1200,1600', f'--screenshot={shot}',
                      page.as_uri())
    assert result.returncode == 0 and shot.stat().st_size > 10_000, result.stderr[-2000:]
    folder = os.environ.get('VIDACTION_DOCS_IMAGES')
    if folder:
        shutil.copy(shot, Path(folder) / 'report.png')
