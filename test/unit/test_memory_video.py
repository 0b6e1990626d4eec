"""Temporal memory on real embeddings: the CPU backend's vectors of the demo video's 795 frames (10 fps).

The embeddings are computed once (about a minute on 2 cores) and cached under ~/.cache/vidaction_ros/
(vidaction_ros.tools.memory_data), hence the slow marker; with the cache warm the module runs in seconds.
Expected answers come from the frame timeline (index / 10 s) and brute-force numpy over the real
vectors, never from the memory's own output.
"""
from __future__ import annotations

import numpy as np
import pytest

from vidaction_ros.memory import TemporalMemory
from vidaction_ros.memory import TieredMemory

pytestmark = pytest.mark.slow

FPS = 10.0


@pytest.fixture(scope='module')
def video(video_path):
    from vidaction_ros.tools.memory_data import video_embeddings

    vectors, stamps = video_embeddings(video_path)
    assert vectors.shape == (795, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(stamps, np.arange(795) / FPS)
    return vectors, stamps


def test_the_scene_two_seconds_ago_on_real_frames(video):
    vecs, stamps = video
    mem = TemporalMemory(384, capacity=300, ttl_s=30.0)
    checked = 0
    for i in range(len(vecs)):
        mem.insert(i, float(stamps[i]), vecs[i])
        # Window: the last 300 frames (30 s at 10 fps, the TTL boundary frame is one more than capacity).
        assert mem.size == min(i + 1, 300)
        e = mem.lookback(vecs[i], 2.0)
        if i < 10:
            assert e is None  # nothing within 1 s of "2 s ago" yet
            continue
        # The frame 2 s ago is index i - 20 (before the start: the first frame, while within 1 s).
        assert e.sequence == max(0, i - 20) and e.stamp_s == stamps[max(0, i - 20)]
        assert e.similarity == pytest.approx(float(vecs[i] @ vecs[max(0, i - 20)]), abs=1e-5)
        checked += 1
    assert checked == 785


def test_knn_between_1_5_and_2_5_s_ago_matches_brute_force(video):
    vecs, stamps = video
    mem = TemporalMemory(384, capacity=300, ttl_s=30.0)
    rng = np.random.default_rng(0)
    probes = set(rng.choice(np.arange(60, 795), 60, replace=False).tolist())
    for i in range(len(vecs)):
        mem.insert(i, float(stamps[i]), vecs[i])
        if i not in probes:
            continue
        # Ages 1.45..2.55 s: frames i-25 .. i-15 (bounds between frames, so float rounding cannot flip one).
        hits = mem.knn(vecs[i], k=3, min_age_s=1.45, max_age_s=2.55)
        cand = np.arange(i - 25, i - 14)
        sims = vecs[cand] @ vecs[i]
        exp = cand[np.argsort(-sims, kind='stable')[:3]]
        assert set(h.sequence for h in hits) <= set(cand.tolist())
        np.testing.assert_allclose([h.similarity for h in hits], np.sort(sims)[::-1][:3], atol=1e-5)
        assert hits[0].similarity == pytest.approx(float(vecs[exp[0]] @ vecs[i]), abs=1e-5)
        # Unrestricted: the frame itself first, then brute force over the window.
        win = np.arange(max(0, i - 299), i + 1)
        got = mem.knn(vecs[i], k=10)
        assert got[0].sequence == i or got[0].similarity == pytest.approx(1.0, abs=1e-6)  # duplicates tie
        np.testing.assert_allclose([h.similarity for h in got], np.sort(vecs[win] @ vecs[i])[::-1][:10], atol=1e-5)


@pytest.mark.parametrize('storage', ['float16', 'int8'])
def test_compact_storage_on_real_frames_keeps_the_lookback_answer(video, storage):
    vecs, stamps = video
    mem = TemporalMemory(384, capacity=300, ttl_s=30.0, storage=storage)
    worst = 0.0
    for i in range(len(vecs)):
        mem.insert(i, float(stamps[i]), vecs[i])
        if i >= 20:
            e = mem.lookback(vecs[i], 2.0)
            assert e.sequence == i - 20  # time lookups never depend on the vector format
            true = float(vecs[i] @ vecs[i - 20])
            # int8 bound: scale/2 * ||q||_1 with scale = max|v| / 127 (float16: 2^-11 relative per component).
            peak = float(np.max(np.abs(vecs[i - 20])))
            per_component = peak / 254.0 if storage == 'int8' else 2.0**-11 * peak
            bound = per_component * float(np.sum(np.abs(vecs[i]))) + 1e-6
            assert abs(e.similarity - true) <= bound
            worst = max(worst, abs(e.similarity - true))
    assert worst > 0.0  # the format really is lossy (the test would pass vacuously on float32 otherwise)


def test_long_tier_answers_a_minute_ago_on_real_frames(video):
    vecs, stamps = video
    interval, novelty, min_interval = 2.0, 0.8, 1.0
    mem = TieredMemory(384, capacity=300, ttl_s=5.0, long_capacity=1000, long_ttl_s=600.0,
                       keyframe_interval_s=interval, keyframe_novelty_cos=novelty,
                       keyframe_min_interval_s=min_interval)
    # The keyframe rule by hand, over the real vectors.
    expect_kf, last = [], None
    for i in range(len(vecs)):
        mem.insert(i, float(stamps[i]), vecs[i])
        if last is None or stamps[i] - stamps[last] >= interval or (
                stamps[i] - stamps[last] >= min_interval and float(vecs[i] @ vecs[last]) <= novelty):
            expect_kf.append(i)
            last = i
    assert [e.sequence for e in mem.entries(tiers='long')] == expect_kf
    # The window: stamps within ttl of the newest (boundary inclusive, compared as the rule states).
    assert [e.sequence for e in mem.entries(tiers='recent')] == [j for j in range(795) if stamps[j] >= stamps[-1] - 5.0]
    # "What did the scene look like a minute ago?" (t = 19.4 s): the keyframe nearest that time.
    target = stamps[-1] - 60.0
    best = min(expect_kf, key=lambda j: (abs(stamps[j] - target), -stamps[j]))
    e = mem.lookback(vecs[-1], 60.0)
    assert e.sequence == best and abs(e.stamp_s - target) <= interval / 2 + 1e-9
    assert e.similarity == pytest.approx(float(vecs[-1] @ vecs[best]), abs=1e-5)
    # "Have I seen frame 300's scene before?" (49 s ago): brute force over the keyframes older than the window.
    old = [j for j in expect_kf if stamps[-1] - stamps[j] >= 5.0]
    sims = {j: float(vecs[j] @ vecs[300]) for j in old}
    hits = mem.knn(vecs[300], k=5, min_age_s=5.0)
    np.testing.assert_allclose([h.similarity for h in hits], sorted(sims.values(), reverse=True)[:5], atol=1e-5)
    # The window alone has forgotten it: it holds nothing older than its 5 s TTL.
    assert mem.knn(vecs[300], k=5, min_age_s=5.05, tiers='recent') == []
    assert len(mem.knn(vecs[300], k=5, min_age_s=5.05)) == 5
