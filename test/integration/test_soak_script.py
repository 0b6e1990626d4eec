"""bench/soak.py, short: the whole pipeline (processes mode) at 30 fps for half a minute plus a 10 s overload
run. Checks the report and what a steady pipeline must do from first principles: Actions arrive, it opens
no new fds and maps no new shared memory while running, and leaves nothing in /dev/shm after SIGINT.
No speed assertion: latency targets are the long soak's business, not a loaded CI machine's."""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[2] / 'bench' / 'soak.py'
KEYS = ('minutes', 'window_s', 'rss_mb_start', 'rss_mb_end', 'fds_start', 'fds_end', 'shm_start', 'shm_end',
        'p99_ms_first_min', 'p99_ms_last_min', 'dropped', 'actions', 'shm_leftovers', 'targets', 'overload')


def test_short_soak_reports_flat_resources_and_leaves_no_shm(tmp_path, video_path):
    out = tmp_path / 'soak.json'
    # A ROS domain of its own: the soak counts what its pipeline leaves in /dev/shm, and a consumer another test
    # of this process left in the suite's domain would hold the camera's iceoryx2 service past the stop.
    domain = str(int(os.environ.get('ROS_DOMAIN_ID', '0')) % 100 + 101)
    proc = subprocess.run([sys.executable, str(SCRIPT), '--minutes', '0.5', '--overload-s', '10',
                           '--source', video_path, '--json', str(out)],
                          cwd=tempfile.gettempdir(), env=dict(os.environ, ROS_DOMAIN_ID=domain),
                          capture_output=True, text=True, timeout=600)
    report = proc.stdout + proc.stderr
    assert out.is_file(), report[-4000:]
    result = json.loads(out.read_text())
    # A start that failed: what the pipeline logged as wrong comes first (CI shows only part of the output).
    assert 'error' not in result, (result['error'], result.get('problems'), report[-2000:])
    for key in KEYS:
        assert key in result, (key, report[-4000:])
    assert result['minutes'] == 0.5 and result['window_s'] == pytest.approx(10.0)
    assert result['actions'] > 0, report[-4000:]
    # A steady pipeline opens nothing new and maps no new segments; the ring is there while it runs.
    assert result['fds_end'] == result['fds_start'], report[-4000:]
    assert result['shm_end'] == result['shm_start'] and result['rings_end'] == result['rings_start'] == 1
    assert result['rss_mb_start'] > 0 and result['rss_mb_end'] > 0
    # After SIGINT: clean exit, nothing of the pipeline left in /dev/shm (rings, DDS participant segments).
    assert result['exit_code'] == 0 and result['targets']['clean_stop'], report[-4000:]
    assert result['shm_leftovers'] == [], report[-4000:]
    assert result['rings_seen'] and not any(Path('/dev/shm', n).exists() for n in result['rings_seen'])
    # Overload: it ran, kept deciding, counted its drops and stopped cleanly (speed not asserted).
    overload = result['overload']
    assert overload['targets']['no_crash'] and overload['actions'] > 0, report[-4000:]
    assert overload['dropped'] > 0 and overload['exit_code'] == 0 and overload['shm_leftovers'] == []
    for line in ('PASS  fds_flat', 'PASS  shm_flat', 'PASS  no_shm_leftovers', 'PASS  overload_no_crash'):
        assert line in proc.stdout, report[-4000:]
