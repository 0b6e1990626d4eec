"""Unit tests for vidaction_ros.memory.tiers (the long-horizon keyframe tier; pure core, no ROS).

Expected values come from a plain list model of the rules (keyframe rule, TTL, capacity, reset),
hand-computed stamps and brute-force numpy search, never from the code under test.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vidaction_ros.memory import BACKWARDS_TOLERANCE_S, MemoryInputError
from vidaction_ros.tools.memory_data import sphere_walk
from vidaction_ros.memory import TieredMemory, is_keyframe


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return (v / np.linalg.norm(v)).astype(np.float32)


def seqs(entries) -> list[int]:
    return [e.sequence for e in entries]


class TierModel:
    """The two tiers' rules on plain lists: window (TTL, capacity, reset) and keyframe tier."""

    def __init__(self, capacity, ttl, long_capacity, long_ttl, interval, novelty, min_interval):
        self.capacity, self.ttl = capacity, ttl
        self.long_capacity, self.long_ttl = long_capacity, long_ttl
        self.interval, self.novelty, self.min_interval = interval, novelty, min_interval
        self.window: list[tuple[int, float]] = []
        self.long: list[tuple[int, float]] = []
        self.newest = None
        self.last_kf = None  # (stamp, unit vector as float64)

    def insert(self, seq, t, v) -> bool:
        v = np.asarray(v, dtype=np.float64)
        v = v / np.linalg.norm(v)
        if self.window and t < max(s for _, s in self.window) - BACKWARDS_TOLERANCE_S:
            self.window, self.long, self.newest, self.last_kf = [], [], None, None
        self.window.append((seq, t))
        wnew = max(s for _, s in self.window)
        self.window = [(q, s) for q, s in self.window if s >= wnew - self.ttl][-self.capacity:]
        self.newest = t if self.newest is None else max(self.newest, t)
        self.long = [(q, s) for q, s in self.long if s >= self.newest - self.long_ttl]
        if self.last_kf is None:
            kf = True
        else:
            dt = t - self.last_kf[0]
            kf = dt >= self.interval or (dt >= self.min_interval and float(v @ self.last_kf[1]) <= self.novelty)
        if kf:
            self.long.append((seq, t))
            self.long = self.long[-self.long_capacity:]
            self.last_kf = (t, v)
        return kf


# ---------------------------------------------------------------------- the keyframe rule


def test_is_keyframe_rule_by_hand():
    a, b = unit([1, 0, 0]), unit([1, 1, 0])  # cos(a, b) = 0.7071
    kw = dict(interval_s=10.0, novelty_cos=0.8, min_interval_s=2.0)
    assert is_keyframe(5.0, a, None, None, **kw)  # nothing kept yet
    assert not is_keyframe(5.0, a, 0.0, a, **kw)  # same scene, 5 s < 10 s
    assert is_keyframe(10.0, a, 0.0, a, **kw)  # interval reached (boundary inclusive)
    assert is_keyframe(3.0, b, 0.0, a, **kw)  # novel (0.707 <= 0.8) and 3 s >= 2 s
    assert not is_keyframe(1.5, b, 0.0, a, **kw)  # novel but too soon after the last keyframe
    assert is_keyframe(2.0, b, 0.0, a, **kw)  # min interval boundary inclusive
    assert not is_keyframe(3.0, b, 0.0, a, interval_s=10.0, novelty_cos=0.7, min_interval_s=2.0)  # 0.707 > 0.7


# ---------------------------------------------------------------------- hand-made stream


def hand_stream():
    """1 Hz for 40 s: scene A (e0 plus a little e2/e3) until t=22, scene B (exactly e1) from t=23 to 26,
    A again after. A frames have no e1 component: their cosine to B is exactly 0."""
    out = []
    for t in range(41):
        if 23 <= t <= 26:
            v = [0, 1, 0, 0]
        else:
            v = [1, 0, 0.05 * (t % 3), 0.05 * (t % 2)]
        out.append((t, float(t), unit(v)))
    return out


def test_keyframes_ttl_and_lookback_on_a_hand_made_stream():
    mem = TieredMemory(4, capacity=100, ttl_s=5.0, long_capacity=100, long_ttl_s=30.0, keyframe_interval_s=10.0,
                       keyframe_novelty_cos=0.5, keyframe_min_interval_s=2.0)
    kfs = [s for s, t, v in hand_stream() if mem.insert(s, t, v).keyframe]
    # By hand: 0 (first), 10, 20 (interval), 23 (B: cos 0 to the keyframe at 20, 3 s >= 2 s),
    # 27 (A again: cos ~0 to B at 23, 4 s), 37 (interval from 27).
    assert kfs == [0, 10, 20, 23, 27, 37]
    # Window: stamps >= 40 - 5; long tier: stamps >= 40 - 30 (0 expired).
    assert seqs(mem.entries(tiers='recent')) == [35, 36, 37, 38, 39, 40]
    assert seqs(mem.entries(tiers='long')) == [10, 20, 23, 27, 37]
    # Union, oldest first, keyframe 37 (in both tiers) once.
    assert seqs(mem.entries()) == [10, 20, 23, 27, 35, 36, 37, 38, 39, 40]
    assert mem.size == 6 and mem.long_size == 5
    assert mem.newest_stamp_s == 40.0 and mem.oldest_stamp_s == 10.0
    s = mem.stats()
    assert s['keyframes'] == 6 and s['long_size'] == 5 and s['long_evicted_ttl'] == 1 and s['size'] == 6

    q = unit([0, 1, 0, 0])
    # "What did the scene look like 17 s ago?" -> t=23 exactly: the B keyframe, cosine 1 to e1.
    e = mem.lookback(q, 17.0)
    assert (e.sequence, e.stamp_s) == (23, 23.0) and e.similarity == pytest.approx(1.0, abs=1e-6)
    # 25 s ago -> t=15: keyframes 10 and 20 are both 5 s away (tie -> the newer); within 12.5 s.
    assert mem.lookback(q, 25.0).sequence == 20
    assert mem.lookback(q, 25.0, tolerance_s=4.0) is None
    # 2 s ago -> t=38, in the window.
    assert mem.lookback(q, 2.0).sequence == 38
    # Only the window: nothing within 8.5 s of t=23.
    assert mem.lookback(q, 17.0, tiers='recent') is None
    # "Have I seen B before?": only the long tier remembers it (the window forgot it at t=31).
    hits = mem.knn(q, k=3)
    assert seqs(hits)[0] == 23 and hits[0].similarity == pytest.approx(1.0, abs=1e-6)
    assert 23 not in seqs(mem.knn(q, k=10, tiers='recent'))
    # Ages are from the newest stamp (40) for both tiers: 10..20 s ago -> stamps 20..30.
    assert seqs(mem.knn(q, k=10, min_age_s=10.0, max_age_s=20.0)) == [23, 27, 20]
    assert mem.nearest_in_time(24.0).sequence == 23
    np.testing.assert_allclose(mem.vector_of(23), [0, 1, 0, 0], atol=1e-7)
    assert mem.vector_of(5) is None
    # The long tier's TTL runs on every insert's stamp, not only on keyframes: t=46 is no keyframe
    # (9 s after 37, same scene) yet expires keyframe 10 (< 46 - 30).
    res = mem.insert(41, 46.0, unit([1, 0, 0, 0.05]))
    assert not res.keyframe
    assert seqs(mem.entries(tiers='long')) == [20, 23, 27, 37]
    assert seqs(mem.entries(tiers='recent')) == [41]  # 35..40 < 46 - 5
    # A stalled stream: the clock says 60. Window: 46 < 55 goes; long: 20, 23, 27 < 30 go.
    assert mem.evict_expired(60.0) == 1 + 3
    assert seqs(mem.entries(tiers='long')) == [37]
    assert mem.size == 0


def test_long_tier_capacity_evicts_oldest_keyframe():
    mem = TieredMemory(4, capacity=10, ttl_s=100.0, long_capacity=3, long_ttl_s=1000.0, keyframe_interval_s=1.0,
                       keyframe_novelty_cos=-1.0, keyframe_min_interval_s=0.0)
    v = unit([1, 0, 0, 0])
    for i in range(12):
        assert mem.insert(i, i * 0.5, v).keyframe == (i % 2 == 0)  # every second frame: 1 s spacing
    assert seqs(mem.entries(tiers='long')) == [6, 8, 10]
    assert mem.stats()['long_evicted_capacity'] == 3


def test_time_backwards_clears_both_tiers(caplog):
    mem = TieredMemory(4, capacity=10, ttl_s=5.0, long_ttl_s=60.0, keyframe_interval_s=2.0,
                       keyframe_novelty_cos=-1.0, logger=logging.getLogger('test_memory_tiers'))
    for i in range(10):
        mem.insert(i, 100.0 + i, unit([1, 0, i, 0]))
    assert mem.long_size == 5  # 100, 102, ..., 108
    with caplog.at_level(logging.WARNING, logger='test_memory_tiers'):
        res = mem.insert(50, 3.0, unit([0, 1, 0, 0]))  # the bag looped
    assert res.reset and res.keyframe  # first frame after a reset is a keyframe
    assert seqs(mem.entries()) == [50] and seqs(mem.entries(tiers='long')) == [50]
    assert mem.newest_stamp_s == 3.0
    assert any('backwards' in r.getMessage() for r in caplog.records)
    assert mem.knn(unit([1, 0, 0, 0]), k=10) == [mem.knn(unit([1, 0, 0, 0]), k=1)[0]]


def test_rejected_insert_changes_neither_tier():
    mem = TieredMemory(4, capacity=10, ttl_s=5.0, long_ttl_s=60.0, max_future_s=1.0)
    mem.insert(0, 10.0, unit([1, 0, 0, 0]), now_s=10.0)
    before = (mem.entries(), mem.entries(tiers='long'), mem.stats()['keyframes'])
    for bad in ([0, 0, 0, 0], [1, 2, 3], [np.nan, 0, 0, 1]):
        with pytest.raises(MemoryInputError):
            mem.insert(1, 11.0, bad)
    with pytest.raises(MemoryInputError, match='ahead'):
        mem.insert(2, 20.0, unit([0, 1, 0, 0]), now_s=10.0)
    assert (mem.entries(), mem.entries(tiers='long'), mem.stats()['keyframes']) == before
    with pytest.raises(MemoryInputError, match='tiers'):
        mem.knn(unit([1, 0, 0, 0]), tiers='both')
    with pytest.raises(MemoryInputError):
        mem.knn([1, 0, 0])


def test_empty_memory_queries():
    mem = TieredMemory(4)
    q = unit([1, 0, 0, 0])
    assert mem.knn(q) == [] and mem.lookback(q, 2.0) is None and mem.nearest_in_time(1.0) is None
    assert mem.newest_stamp_s is None and mem.oldest_stamp_s is None and mem.entries() == []
    with pytest.raises(MemoryInputError):
        mem.knn([1.0, 0.0])  # a bad vector is an error even on an empty memory
    mem.insert(0, 1.0, q)
    mem.clear()
    assert mem.size == 0 and mem.long_size == 0 and mem.knn(q) == []
    assert mem.insert(1, 0.5, q).reset is False  # cleared: an older stamp is a plain insert


@pytest.mark.parametrize('kwargs', [
    {'keyframe_interval_s': 0.0}, {'keyframe_min_interval_s': -1.0},
    {'keyframe_interval_s': 2.0, 'keyframe_min_interval_s': 3.0}, {'keyframe_novelty_cos': 1.5},
    {'long_ttl_s': 1.0, 'keyframe_interval_s': 2.0}, {'long_capacity': 0}, {'storage': 'int4'},
])
def test_bad_configuration_rejected(kwargs):
    with pytest.raises(ValueError):
        TieredMemory(4, **kwargs)


# ---------------------------------------------------------------------- "2 min ago" on a long stream


def test_two_minutes_ago_and_seen_before_beyond_the_window():
    # 10 Hz for 200 s of a video-like walk; window 5 s; keyframes every 2 s (novelty off) for 5 min.
    dim, n = 32, 2000
    rng = np.random.default_rng(1)
    data = sphere_walk(rng, n, dim, cos=0.995)
    mem = TieredMemory(dim, capacity=100, ttl_s=5.0, long_capacity=500, long_ttl_s=300.0, keyframe_interval_s=2.0,
                       keyframe_novelty_cos=-1.0, keyframe_min_interval_s=0.0)
    stamps = np.arange(n) * 0.1  # computed like the inserts below, so boundary comparisons agree
    model = TierModel(100, 5.0, 500, 300.0, 2.0, -1.0, 0.0)
    for i in range(n):
        assert mem.insert(i, float(stamps[i]), data[i]).keyframe == model.insert(i, float(stamps[i]), data[i])
    assert seqs(mem.entries(tiers='long')) == [q for q, _ in model.long]
    assert len(model.long) == 100  # a keyframe every 20 frames (2 s, up to float rounding of i * 0.1)
    assert seqs(mem.entries(tiers='recent')) == [q for q, _ in model.window]
    newest = stamps[-1]
    target = newest - 120.0
    # First principles: the nearest keyframe to newest - 120 s, with its cosine to the query.
    kf = [q for q, _ in model.long]
    best = min(kf, key=lambda q: (abs(stamps[q] - target), -stamps[q]))
    q = data[-1]
    e = mem.lookback(q, 120.0)
    assert e.sequence == best and abs(e.stamp_s - target) <= 1.0 + 1e-9  # within interval / 2
    assert e.similarity == pytest.approx(float(data[best] @ q), abs=1e-5)
    # "Have I seen this place before?" for a perturbed view of frame 600 (60 s ago, long outside the
    # window): the answer is the keyframe most similar to it, by brute force over the kept keyframes.
    probe = unit(data[600] + 0.02 * rng.standard_normal(dim))
    ok = [q for q in kf if newest - stamps[q] >= 5.0]
    expect = max(ok, key=lambda q: float(data[q] @ probe))
    (hit,) = mem.knn(probe, k=1, min_age_s=5.0)
    assert hit.sequence == expect
    assert abs(hit.stamp_s - stamps[600]) <= 2.0
    # Top-5 over both tiers: same similarities as brute force over the union of both tiers' frames.
    union = sorted(set(kf) | {q for q, _ in model.window})
    exp5 = sorted((float(data[q] @ probe) for q in union), reverse=True)[:5]
    np.testing.assert_allclose([h.similarity for h in mem.knn(probe, k=5)], exp5, atol=1e-5)


# ---------------------------------------------------------------------- property test


step_strategy = st.one_of(
    st.sampled_from([0.0, 0.25, 0.5, 1.0, 3.0, 20.0, -5.0]),
    st.floats(min_value=0.0, max_value=4.0, allow_nan=False),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    capacity=st.integers(min_value=1, max_value=8),
    long_capacity=st.integers(min_value=1, max_value=6),
    ttl=st.sampled_from([0.5, 2.0, 5.0]),
    long_ttl=st.sampled_from([4.0, 10.0, 50.0]),
    interval=st.sampled_from([1.0, 2.0, 4.0]),
    novelty=st.sampled_from([-1.0, 0.0, 0.9]),
    dts=st.lists(step_strategy, min_size=1, max_size=50),
    jumps=st.integers(min_value=0, max_value=2**20),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_tier_laws_hold_for_any_stream(capacity, long_capacity, ttl, long_ttl, interval, novelty, dts, jumps, seed):
    dim = 6
    rng = np.random.default_rng(seed)
    data = sphere_walk(rng, len(dts), dim, cos=0.97)
    for i in range(len(dts)):  # occasional scene cuts, so the novelty rule fires too
        if (jumps >> (i % 20)) & 1:
            data[i] = unit(rng.standard_normal(dim))
    min_interval = interval / 4
    mem = TieredMemory(dim, capacity=capacity, ttl_s=ttl, long_capacity=long_capacity, long_ttl_s=long_ttl,
                       keyframe_interval_s=interval, keyframe_novelty_cos=novelty,
                       keyframe_min_interval_s=min_interval)
    model = TierModel(capacity, ttl, long_capacity, long_ttl, interval, novelty, min_interval)
    t = 50.0
    for i, dt in enumerate(dts):
        t += dt
        res = mem.insert(i, t, data[i])
        assert res.keyframe == model.insert(i, t, data[i])
        long = [(e.sequence, e.stamp_s) for e in mem.entries(tiers='long')]
        assert long == model.long
        assert [(e.sequence, e.stamp_s) for e in mem.entries(tiers='recent')] == model.window
        assert len(long) <= long_capacity and mem.size <= capacity
        assert all(s >= model.newest - long_ttl for _, s in long)  # the long TTL holds at every step
        live = {q for q, _ in model.window} | {q for q, _ in model.long}
        hits = mem.knn(data[int(rng.integers(0, i + 1))], k=capacity + long_capacity + 2)
        assert set(seqs(hits)) == live  # nothing evicted ever returned, nothing live missing
        assert len(hits) == len(live)  # keyframes in both tiers reported once
        sims = [h.similarity for h in hits]
        assert sims == sorted(sims, reverse=True)
        assert mem.newest_stamp_s == model.newest
