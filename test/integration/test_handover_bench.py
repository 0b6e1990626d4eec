"""bench/handover.py, short: every Embedding handed over arrives, through each mode, and the report has a
row per mode with its ratio to the intra-process hand-over. No speed assertion."""
import json

import pytest

from conftest import load_bench

pytestmark = pytest.mark.integration


def test_every_embedding_arrives_through_each_mode(tmp_path):
    bench = load_bench('handover')
    out = tmp_path / 'handover.json'
    modes = ['intra', 'dds'] + (['iox_local'] if _iceoryx2() else [])
    assert bench.main(['--messages', '40', '--rate', '200', '--modes', ','.join(modes), '--json', str(out)]) == 0
    rows = {row['mode']: row for row in json.loads(out.read_text())['rows']}
    assert set(rows) == set(modes)
    for row in rows.values():
        assert row['received'] == 40, row
        assert 0 < row['p50_ms'] <= row['p99_ms']
    assert rows['intra']['p50_vs_intra'] == pytest.approx(1.0)


def _iceoryx2() -> bool:
    from vidaction_ros.transport import iox_frames
    return iox_frames.available()
