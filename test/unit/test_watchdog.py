"""The perception watchdog core, on hand-made clocks."""
import pytest

from vidaction_ros.policy.watchdog import PerceptionWatchdog

WALL = 1_700_000_000.0


def test_silent_until_the_first_decision():
    dog = PerceptionWatchdog(0.2)
    assert dog.check(WALL) is None and dog.check(WALL + 100) is None


def test_stale_after_the_deadline_on_capture_stamps_and_repeated_until_recovery():
    dog = PerceptionWatchdog(0.2)
    assert dog.fresh(WALL, 7, now_s=WALL + 0.08) is None         # decided 80 ms after capture
    assert dog.check(WALL + 0.19) is None
    assert dog.check(WALL + 0.199) is None                       # just inside the deadline
    first = dog.check(WALL + 0.25)
    assert first.kind == 'stale' and first.last_sequence == 7 and first.age_s == pytest.approx(0.25)
    assert 'stale' in first.reason and '#7' in first.reason and '200 ms' in first.reason
    again = dog.check(WALL + 0.30)
    assert again.kind == 'stale' and dog.failsafes == 2 and dog.episodes == 1
    back = dog.fresh(WALL + 1.0, 8, now_s=WALL + 1.07)
    assert back.kind == 'recovered' and not dog.stale
    assert dog.check(WALL + 1.1) is None
    dog.check(WALL + 2.0)
    assert dog.episodes == 2


def test_a_slow_embedder_counts_too():
    # Frames keep coming but each is decided 300 ms after capture: the newest information is too old.
    dog = PerceptionWatchdog(0.2)
    dog.fresh(WALL, 1, now_s=WALL + 0.3)
    assert dog.check(WALL + 0.3).kind == 'stale'


def test_media_time_stamps_measure_age_from_the_decision():
    # A file replayed at media time: stamps near 0 are not on the wall clock.
    dog = PerceptionWatchdog(0.2)
    dog.fresh(12.3, 5, now_s=WALL)
    assert dog.check(WALL + 0.15) is None
    assert dog.check(WALL + 0.21).kind == 'stale'


@pytest.mark.parametrize('deadline', [0.0, -1.0, float('nan')])
def test_bad_deadline(deadline):
    with pytest.raises(ValueError, match='deadline'):
        PerceptionWatchdog(deadline)


def test_no_decision_within_the_startup_allowance_is_stale_and_repeats():
    # A camera that never comes up: armed at activation (t=100), stale once 3 s pass without a decision.
    w = PerceptionWatchdog(0.5, startup_s=3.0)
    w.start(100.0)
    assert w.check(102.9) is None and w.check(103.0) is None       # within the allowance: not yet
    first = w.check(103.1)
    assert first.kind == 'stale' and first.last_sequence == -1 and 'since activation' in first.reason
    assert first.last_stamp_s + first.age_s == pytest.approx(103.1)  # the failsafe is stamped "now"
    assert w.check(103.2).kind == 'stale' and w.failsafes == 2 and w.episodes == 1
    recovered = w.fresh(103.25, 0, 103.3)                           # the first decision ends it
    assert recovered.kind == 'recovered' and not w.stale
    assert w.check(103.5) is None


def test_without_an_allowance_start_changes_nothing():
    w = PerceptionWatchdog(0.5)
    w.start(100.0)
    assert w.check(1000.0) is None


def test_bad_startup_allowance():
    with pytest.raises(ValueError, match='start-up'):
        PerceptionWatchdog(0.5, startup_s=-1.0)
