"""bench/transport.py, short: a real run (its own processes and DDS participants) through the image baseline, the
composed direct hand-off and iceoryx2; the JSON has one row per mode with frames delivered and p50 <= p99, and
none of the rows the shm ring took with it. No speed assertion: a loaded 2-core CI machine says nothing."""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import REPO, load_bench

pytestmark = pytest.mark.integration

SCRIPT = REPO / 'bench' / 'transport.py'
REMOVED = ('shm', 'shm_view', 'shm_loan_bell', 'shm_loan_bell_view', 'inproc_bell')
FRAMES = 30


def _iceoryx2() -> bool:
    from vidaction_ros.transport import iox_frames
    return iox_frames.available()


def test_default_modes_are_the_current_set_without_the_shm_ring():
    bench = load_bench('transport')
    assert set(bench.LABELS) == {'image', 'inproc', 'inproc_direct', 'inproc_inline', 'iox_loan', 'iox_loan_view'}
    assert not set(REMOVED) & set(bench.LABELS)
    assert bench.LABELS['inproc_direct'] == 'composed, direct hand-off'


def test_a_short_run_delivers_frames_through_each_mode(tmp_path: Path):
    modes = ['image', 'inproc_direct'] + (['iox_loan'] if _iceoryx2() else [])
    out = tmp_path / 'transport.json'
    # A ROS domain of its own: the bench's DDS participants and iceoryx2 services (named by domain) stay off the
    # suite's and off other runs'.
    domain = str(int(os.environ.get('ROS_DOMAIN_ID', '0')) % 20 + 211)
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', ROS_DOMAIN_ID=domain)
    proc = subprocess.Popen([sys.executable, str(SCRIPT), '--frames', str(FRAMES), '--sizes', '160x120',
                             '--modes', ','.join(modes), '--json', str(out)],
                            cwd=tempfile.gettempdir(), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        output, _ = proc.communicate(timeout=300)      # the deadline: discovery is bounded inside at 60 s a mode
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f'bench/transport.py did not finish in 300 s:\n{output[-4000:]}')
    assert proc.returncode == 0, output[-4000:]
    report = json.loads(out.read_text())
    rows = report['results']
    assert [row['mode'] for row in rows] == modes, output[-4000:]
    for row in rows:
        assert row['mode'] not in REMOVED
        assert (row['width'], row['height']) == (160, 120)
        assert row['sent'] == FRAMES and 0 < row['delivered'] <= FRAMES, row
        assert row['lost_frames'] == 0, row
        assert 0 < row['p50_ms'] <= row['p99_ms'] <= row['max_ms'], row
    by_mode = {row['mode']: row for row in rows}
    assert by_mode['image']['x_p50_vs_image'] == pytest.approx(1.0)
    # The direct modes went through a FrameSubscription by the direct path, never through DDS.
    paths = by_mode['inproc_direct']['breakdown']['paths']
    assert paths['local'] > 0 and paths['dds'] == 0, paths
    if 'iox_loan' in by_mode:
        paths = by_mode['iox_loan']['breakdown']['paths']
        assert paths['iox'] > 0 and paths['dds'] == 0, paths
    assert 'sensor_msgs/Image (rclpy)' in output and 'composed, direct hand-off' in output
