"""bench/e2e.py --mode processes, short: the four processes' Actions are timed from the bench's own process,
with every stage and hop of the composed report. No speed assertion: order and completeness only."""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BENCH = Path(__file__).resolve().parents[2] / 'bench' / 'e2e.py'


def test_processes_mode_times_the_four_processes_actions(tmp_path, video_path):
    out = tmp_path / 'e2e.json'
    env = dict(os.environ, ROS_DOMAIN_ID=str(int(os.environ.get('ROS_DOMAIN_ID', '0')) % 100 + 131))
    proc = subprocess.run([sys.executable, str(BENCH), '--mode', 'processes', '--lockstep', '--frames', '20',
                           '--source', video_path, '--json', str(out)], cwd=tempfile.gettempdir(), env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result['process_mode'] == 'processes' and result['mode'] == 'lockstep'
    # Lock-step: every frame decided, once, and heard by the bench (its reader matched late or lagging loses none)
    log = Path(result['counts']['camera']['log'])
    assert result['frames'] == 20, (result['frames'], result['actions'], log.read_text()[-3000:])
    for name in ('capture_to_embed', 'embed', 'embed_to_decide', 'capture_to_decide'):
        stage = result['stages'][name]
        assert 0 < stage['p50_ms'] <= stage['p99_ms'], (name, stage)
    assert result['stages']['embed']['p99_ms'] <= result['stages']['capture_to_decide']['p99_ms']
    assert len(result['hops']) == 6 and all(h['p50_ms'] <= h['p99_ms'] for h in result['hops'].values())
    # Per frame, everything but the model is camera->Action minus the embedding: positive, and never more than
    # the whole. The Action reaches a subscriber after it was stamped decided.
    overhead = result['hops']['all but the model (per frame)']
    assert 0 < overhead['p50_ms'] <= result['stages']['capture_to_decide']['p50_ms']
    assert result['hops']['Action out (decided -> heard)']['p50_ms'] > 0
    assert 'p99 minus embedder p99' in proc.stdout
