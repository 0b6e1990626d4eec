"""The bag player (`vidaction-bag play`, our `ros2 bag play` stand-in) in a child process, a real rclpy
subscriber in this process, over real DDS on loopback (test/conftest.py keeps discovery local).

The committed fixture test/data/vtest_replay/ is played; what must arrive is read from the same bag with
ingest.bags, so the expectations come from the recording, not from the player."""
import subprocess
import sys
import tempfile

import pytest
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage

from bag_helpers import REPLAY_BAG, TopicCollector, start_player
from ros_helpers import stop_group
from vidaction_ros.ingest import bags as bag_io

pytestmark = pytest.mark.integration

TOPIC = '/image_raw/compressed'
# Deep and reliable: this test checks that every message arrives, not how a live consumer copes with loss.
RELIABLE = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=500, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)
CLOCK = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.BEST_EFFORT,
                   durability=DurabilityPolicy.VOLATILE)
TIMEOUT_S = 180.0


def stamp_ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


@pytest.fixture(scope='module')
def recorded():
    """(bag_time_ns, message) for every message of the fixture, deserialised by rclpy from the bag's CDR."""
    assert REPLAY_BAG.is_dir(), f'replay fixture missing: {REPLAY_BAG} (test/data/make_vtest_replay.sh)'
    return [(m.bag_time_ns, deserialize_message(m.data, CompressedImage))
            for m in bag_io.read_raw(str(REPLAY_BAG), [TOPIC])]


def play(context, tmp_path, *args, subscriptions=None, until=None):
    """Start a collector, then the player; wait for `until(collector)` and for the player to exit."""
    collector = TopicCollector(subscriptions or {TOPIC: (CompressedImage, RELIABLE)}, context=context)
    log = tmp_path / 'player.log'
    proc = start_player(str(REPLAY_BAG), '--wait-for-subscribers', '1', '--qos-depth', '500', *args,
                        log_path=str(log))
    try:
        if until is not None:
            done = collector.wait_for(until, TIMEOUT_S)
            assert done, f'not everything arrived; player log:\n{log.read_text()[-3000:]}'
        code = proc.wait(TIMEOUT_S)
    finally:
        if proc.poll() is None:
            stop_group(proc)
        collector.close()
    return collector, code, log.read_text()


def test_every_message_arrives_in_order_with_recorded_stamps_and_bytes(context, tmp_path, recorded):
    n = len(recorded)
    collector, code, log = play(context, tmp_path, '--rate', '4',
                                until=lambda c: len(c.messages(TOPIC)) >= n)
    assert code == 0, log
    got = collector.messages(TOPIC)
    assert len(got) == n
    assert [stamp_ns(m.header.stamp) for m in got] == [stamp_ns(m.header.stamp) for _, m in recorded]
    # Recorded CDR bytes are published as they are: payload and format arrive untouched.
    assert all(bytes(a.data) == bytes(b.data) and a.format == b.format for a, (_, b) in zip(got, recorded))
    # The fixture's header stamps are media time (46.0 s, 46.2 s, ...) and equal the bag times.
    assert [stamp_ns(m.header.stamp) for _, m in recorded] == [t for t, _ in recorded]
    assert f'played {n} messages in 1 pass' in log


def test_clock_is_published_in_bag_time_when_asked(context, tmp_path, recorded):
    n = len(recorded)
    first, last = recorded[0][0], recorded[-1][0]
    subs = {TOPIC: (CompressedImage, RELIABLE), '/clock': (Clock, CLOCK)}
    collector, code, log = play(context, tmp_path, '--rate', '4', '--clock', '20', subscriptions=subs,
                                until=lambda c: len(c.messages(TOPIC)) >= n)
    assert code == 0, log
    clocks = [stamp_ns(m.clock) for m in collector.messages('/clock')]
    assert len(clocks) >= n // 2, f'only {len(clocks)} /clock messages'
    assert clocks == sorted(clocks), 'sim time ran backwards within one pass'
    assert first <= min(clocks) and max(clocks) <= last
    # The player publishes the clock at each message's bag time, the last one included; allow a lost datagram.
    assert max(clocks) >= last - 1_000_000_000


def test_no_clock_unless_asked(context, tmp_path, recorded):
    n = len(recorded)
    subs = {TOPIC: (CompressedImage, RELIABLE), '/clock': (Clock, CLOCK)}
    collector, code, log = play(context, tmp_path, '--rate', '8', subscriptions=subs,
                                until=lambda c: len(c.messages(TOPIC)) >= n)
    assert code == 0, log
    assert collector.messages('/clock') == []


def test_loop_restarts_at_the_first_stamp_and_stops_on_sigint(context, tmp_path, recorded):
    n = len(recorded)
    collector = TopicCollector({TOPIC: (CompressedImage, RELIABLE)}, context=context)
    log = tmp_path / 'player.log'
    proc = start_player(str(REPLAY_BAG), '--loop', '--rate', '8', '--wait-for-subscribers', '1',
                        '--qos-depth', '500', log_path=str(log))
    try:
        assert collector.wait_for(lambda c: len(c.messages(TOPIC)) >= n + 5, TIMEOUT_S), log.read_text()
        code = stop_group(proc, timeout=60)
    finally:
        if proc.poll() is None:
            stop_group(proc)
        collector.close()
    got = [stamp_ns(m.header.stamp) for m in collector.messages(TOPIC)]
    expected = [t for t, _ in recorded]
    assert got[:n] == expected
    assert got[n:n + 5] == expected[:5]
    assert code == 0, 'a looping player stopped by SIGINT is a clean stop: exit 0'
    assert '(stopped)' in log.read_text()


def test_bad_bag_and_unknown_topic_fail_at_startup_with_the_reason(tmp_path):
    missing = tmp_path / 'no_such_bag'
    for args, reason in [([str(missing)], 'no_such_bag'),
                         ([str(REPLAY_BAG), '--topics', '/nope'], '/nope')]:
        proc = subprocess.run([sys.executable, '-m', 'vidaction_ros.tools.bag_cli', 'play', *args],
                              cwd=tempfile.gettempdir(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert reason in proc.stdout + proc.stderr
