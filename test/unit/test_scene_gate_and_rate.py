import numpy as np
import pytest

from vidaction_ros.ingest.rate import RateLimiter
from vidaction_ros.ingest.scene_gate import SceneChangeGate


def grey(value, shape=(120, 160)):
    return np.full(shape + (3,), value, np.uint8)


def test_first_frame_passes_and_identical_frames_are_gated():
    gate = SceneChangeGate(threshold=4.0, max_skip_s=10.0)
    assert gate.check(grey(100), 0.0).passed
    for i in range(1, 5):
        assert not gate.check(grey(100), i * 0.1).passed
    assert gate.gated == 4 and gate.passed == 1


def test_change_above_threshold_passes_with_its_score():
    gate = SceneChangeGate(threshold=4.0, max_skip_s=10.0)
    gate.check(grey(100), 0.0)
    small = gate.check(grey(103), 0.1)        # mean abs diff 3 < 4
    big = gate.check(grey(110), 0.2)          # 10 >= 4 against the last PASSED frame (100)
    assert not small.passed and small.score == pytest.approx(3.0)
    assert big.passed and big.score == pytest.approx(10.0) and not big.keyframe


def test_static_scene_still_gets_keyframes_at_max_skip():
    gate = SceneChangeGate(threshold=4.0, max_skip_s=1.0)
    passed = [t for t in np.arange(0, 3.05, 0.1) if gate.check(grey(50), float(t)).passed]
    assert passed == pytest.approx([0.0, 1.0, 2.0, 3.0], abs=1e-6)


def test_time_going_backwards_forces_a_keyframe():
    gate = SceneChangeGate(threshold=4.0, max_skip_s=5.0)
    gate.check(grey(50), 10.0)
    result = gate.check(grey(50), 0.0)
    assert result.passed and result.keyframe


def test_disabled_gate_passes_everything():
    gate = SceneChangeGate(enabled=False)
    assert all(gate.check(grey(7), i * 0.01).passed for i in range(10))


def test_gate_rejects_bad_settings():
    with pytest.raises(ValueError, match='threshold'):
        SceneChangeGate(threshold=-1)
    with pytest.raises(ValueError, match='max_skip_s'):
        SceneChangeGate(max_skip_s=0)


def test_rate_limiter_takes_every_third_frame_of_30fps_at_10hz():
    limiter = RateLimiter(10.0)
    stamps = [i / 30.0 for i in range(90)]
    taken = [i for i, s in enumerate(stamps) if limiter.ready(s)]
    assert taken == list(range(0, 90, 3))


def test_rate_limiter_keeps_long_run_rate_under_jitter():
    rng = np.random.default_rng(1)
    limiter = RateLimiter(15.0)
    stamps = np.arange(0, 20, 1 / 60.0) + rng.uniform(-0.003, 0.003, 1200)
    taken = sum(limiter.ready(float(s)) for s in stamps)
    assert abs(taken - 15 * 20) <= 3


def test_rate_limiter_resyncs_after_a_gap_and_after_time_reset():
    limiter = RateLimiter(10.0)
    assert limiter.ready(0.0)
    assert limiter.ready(5.0)          # a gap: take the next frame at once
    assert not limiter.ready(5.05)
    assert limiter.ready(0.0)          # stamps restarted (loop): do not wait 5 s


def test_rate_limiter_rejects_non_positive_rate():
    with pytest.raises(ValueError):
        RateLimiter(0.0)


def test_gate_score_is_the_mean_absolute_grey_difference_of_the_thumbnails():
    # Worked by hand: the left half of the frame goes 0 -> 200, the right half 255 -> 245. Thumbnails average
    # whole blocks, so half the thumbnail differs by 200 and half by 10: mean |diff| = (200 + 10) / 2 = 105
    # (no uint8 wrap-around: 245 - 255 counts 10, not 246).
    before = np.zeros((480, 640), np.uint8)
    before[:, 320:] = 255
    after = np.full((480, 640), 200, np.uint8)
    after[:, 320:] = 245
    gate = SceneChangeGate(threshold=4.0, max_skip_s=10.0)
    gate.check(before, 0.0)
    result = gate.check(after, 0.1)
    assert result.passed and result.score == pytest.approx(105.0)
