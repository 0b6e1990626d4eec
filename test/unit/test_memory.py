"""Unit tests for vidaction_ros.memory.window (pure core, no ROS).

Expected values come from first principles (hand-made stamps, a tiny list model
of the rules, brute-force numpy search), never from the code under test.
Recall is measured on a random walk on the unit sphere (consecutive cosine
about 0.98, like consecutive video frames), never on uniform random vectors.
"""

from __future__ import annotations

import logging
import math
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vidaction_ros.memory import (
    BACKWARDS_TOLERANCE_S,
    InsertResult,
    MemoryEntry,
    MemoryInputError,
    TemporalMemory,
)

# ---------------------------------------------------------------------- helpers


def step_sigma(dim: int, cos: float = 0.98) -> float:
    """Gaussian step size giving E[cos(v_t, v_t+1)] ~= cos on the unit sphere.

    |v + s g|^2 ~= 1 + s^2 dim, and v.(v + s g) ~= 1, so cos ~= 1/sqrt(1 + s^2 dim)."""
    return math.sqrt((1.0 / cos**2 - 1.0) / dim)


def walk(rng: np.random.Generator, n: int, dim: int, cos: float = 0.98, start=None) -> np.ndarray:
    """n steps of a random walk on the unit sphere: v = normalize(v + sigma * gaussian)."""
    sigma = step_sigma(dim, cos)
    v = rng.standard_normal(dim) if start is None else np.asarray(start, dtype=np.float64).copy()
    v /= np.linalg.norm(v)
    out = np.empty((n, dim), dtype=np.float32)
    for i in range(n):
        v = v + sigma * rng.standard_normal(dim)
        v /= np.linalg.norm(v)
        out[i] = v
    return out


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return (v / np.linalg.norm(v)).astype(np.float32)


def seqs(entries) -> list[int]:
    return [e.sequence for e in entries]


def brute_knn(vecs: np.ndarray, ids: list[int], q: np.ndarray, k: int) -> list[int]:
    """Exact top-k ids by inner product (vectors are unit length)."""
    scores = vecs.astype(np.float64) @ q.astype(np.float64)
    order = np.argsort(-scores, kind="stable")[:k]
    return [ids[i] for i in order]


# ---------------------------------------------------------------------- data sanity


def test_random_walk_is_video_like():
    rng = np.random.default_rng(1)
    w = walk(rng, 400, 384)
    cos = np.sum(w[1:] * w[:-1], axis=1)
    assert 0.97 < cos.mean() < 0.99
    assert np.allclose(np.linalg.norm(w, axis=1), 1.0, atol=1e-5)


# ---------------------------------------------------------------------- window laws (property test)

DIM_SMALL = 8


class WindowModel:
    """The eviction rules written as plainly as possible, on a Python list."""

    def __init__(self, capacity: int, ttl: float):
        self.capacity, self.ttl = capacity, ttl
        self.window: list[tuple[int, float]] = []  # (seq, stamp), oldest first

    def insert(self, seq: int, stamp: float) -> tuple[bool, int]:
        before = len(self.window)
        reset = bool(self.window) and stamp < max(s for _, s in self.window) - BACKWARDS_TOLERANCE_S
        if reset:
            self.window = []
        self.window.append((seq, stamp))
        newest = max(s for _, s in self.window)
        self.window = [(q, s) for q, s in self.window if s >= newest - self.ttl]
        self.window = self.window[-self.capacity:]
        return reset, before + 1 - len(self.window)

    def evict_expired(self, now: float) -> int:
        before = len(self.window)
        self.window = [(q, s) for q, s in self.window if s >= now - self.ttl]
        return before - len(self.window)


# Steps: a time increment (0 = equal stamp, big = TTL gap, negative = backwards),
# or an evict_expired call some time after the newest stamp.
step_strategy = st.one_of(
    st.tuples(st.just("insert"), st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, 7.5, -3.0, -0.5])),
    st.tuples(st.just("insert"), st.floats(min_value=0.0, max_value=4.0, allow_nan=False)),
    st.tuples(st.just("expire"), st.floats(min_value=0.0, max_value=12.0, allow_nan=False)),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    capacity=st.integers(min_value=1, max_value=12),
    ttl=st.sampled_from([0.5, 1.0, 3.0, 10.0, 1000.0]),
    steps=st.lists(step_strategy, min_size=1, max_size=60),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_window_laws_hold_for_any_insert_sequence(capacity, ttl, steps, seed):
    rng = np.random.default_rng(seed)
    vecs = walk(rng, len(steps), DIM_SMALL)
    mem = TemporalMemory(DIM_SMALL, capacity=capacity, ttl_s=ttl, logger=logging.getLogger("test_memory"))
    model = WindowModel(capacity, ttl)
    stored: dict[int, np.ndarray] = {}
    t = 100.0
    ever_evicted: set[int] = set()
    for i, (kind, dt) in enumerate(steps):
        if kind == "insert":
            t += dt
            exp_reset, exp_evicted = model.insert(i, t)
            res = mem.insert(i, t, vecs[i])
            stored[i] = vecs[i]
            assert res == InsertResult(window_size=len(model.window), evicted=exp_evicted, reset=exp_reset)
        else:
            now = (mem.newest_stamp_s if mem.size else t) + dt
            assert mem.evict_expired(now) == model.evict_expired(now)
        live = {q for q, _ in model.window}
        ever_evicted |= set(stored) - live
        # Capacity never exceeded; the window is exactly what the rules say
        # (so the oldest go first and nothing younger than the TTL is dropped).
        assert mem.size == len(model.window) <= capacity
        assert [(e.sequence, e.stamp_s) for e in mem.entries()] == model.window
        if model.window:
            newest = max(s for _, s in model.window)
            assert mem.newest_stamp_s == newest
            assert mem.oldest_stamp_s == min(s for _, s in model.window)
            # TTL honoured: nothing older than newest - ttl is stored...
            assert all(s >= newest - ttl for _, s in model.window)
        else:
            assert mem.newest_stamp_s is None and mem.oldest_stamp_s is None
        # ...nor ever returned, and evicted entries never come back.
        q = vecs[rng.integers(0, i + 1)]
        hits = mem.knn(q, k=capacity + 2)
        assert len(hits) == len(model.window)
        assert set(seqs(hits)) == live
        assert not (set(seqs(hits)) & ever_evicted)
        sims = [h.similarity for h in hits]
        assert sims == sorted(sims, reverse=True)
        for h in hits:
            assert h.similarity == pytest.approx(float(stored[h.sequence] @ q), abs=1e-5)
        for gone in ever_evicted - live:
            assert mem.vector_of(gone) is None
    st_ = mem.stats()
    assert st_["size"] == len(model.window)
    assert st_["inserts"] == sum(1 for kind, _ in steps if kind == "insert")
    assert st_["inserts"] == (st_["size"] + st_["evicted_ttl"] + st_["evicted_capacity"]
                              + st_["evicted_reset"])


# ---------------------------------------------------------------------- eviction order and TTL


def test_oldest_evicted_first_when_full():
    rng = np.random.default_rng(2)
    v = walk(rng, 12, 16)
    mem = TemporalMemory(16, capacity=5, ttl_s=1e6)
    for i in range(12):
        res = mem.insert(i, float(i), v[i])
        assert res.evicted == (1 if i >= 5 else 0)
        assert res.window_size == min(i + 1, 5)
        assert seqs(mem.entries()) == list(range(max(0, i - 4), i + 1))
    assert mem.stats()["evicted_capacity"] == 7
    assert mem.vector_of(6) is None and mem.vector_of(8).shape == (16,)
    assert mem.vector_of(8) is not mem.vector_of(8)  # a copy, not a view into the ring


def test_ttl_by_message_time_at_steady_rate():
    # 8 Hz stream with exact binary stamps, ttl 2 s: entries with stamp >= t - 2 stay,
    # i.e. 2 * 8 + 1 = 17 frames (the boundary frame is exactly ttl old and kept).
    rng = np.random.default_rng(3)
    v = walk(rng, 100, 16)
    mem = TemporalMemory(16, capacity=1000, ttl_s=2.0)
    for i in range(100):
        t = i * 0.125
        mem.insert(i, t, v[i])
        assert mem.size == min(i + 1, 17)
        assert mem.oldest_stamp_s == max(0.0, t - 2.0)
    assert mem.stats()["evicted_ttl"] == 100 - 17
    assert mem.stats()["evicted_capacity"] == 0


def test_ttl_gap_evicts_everything_but_the_new_frame():
    mem = TemporalMemory(4, capacity=10, ttl_s=5.0)
    for i in range(6):
        mem.insert(i, float(i), unit([1, i, 0, 0]))
    res = mem.insert(99, 60.0, unit([0, 0, 1, 0]))  # camera stalled for a minute
    assert res == InsertResult(window_size=1, evicted=6, reset=False)
    assert seqs(mem.knn(unit([1, 0, 0, 0]), k=10)) == [99]


def test_evict_expired_uses_given_message_time():
    mem = TemporalMemory(4, capacity=20, ttl_s=5.0)
    for i in range(10):
        mem.insert(i, float(i), unit([1, 0, i, 0]))
    assert [e.stamp_s for e in mem.entries()] == [4.0, 5.0, 6.0, 7.0, 8.0, 9.0]  # inserts applied the TTL
    assert mem.evict_expired(9.0) == 0
    assert mem.evict_expired(3.0) == 0  # an older clock evicts nothing and never resets
    assert mem.evict_expired(12.0) == 3  # stamps < 7 go
    assert [e.stamp_s for e in mem.entries()] == [7.0, 8.0, 9.0]
    assert mem.evict_expired(100.0) == 3
    assert mem.size == 0 and mem.newest_stamp_s is None
    assert mem.knn(unit([1, 0, 0, 0])) == []
    # An empty window has nothing to contradict: an older stamp is a plain insert.
    assert mem.insert(50, 1.0, unit([1, 0, 0, 0])).reset is False


# ---------------------------------------------------------------------- time rules


def test_time_backwards_resets_with_warning(caplog):
    mem = TemporalMemory(4, capacity=10, ttl_s=100.0, logger=logging.getLogger("test_memory.reset"))
    for i in range(5):
        mem.insert(i, 10.0 + i, unit([1, i, 0, 0]))
    with caplog.at_level(logging.WARNING, logger="test_memory.reset"):
        res = mem.insert(5, 10.5, unit([0, 1, 0, 0]))  # the bag looped
    assert res == InsertResult(window_size=1, evicted=5, reset=True)
    assert seqs(mem.entries()) == [5]
    assert mem.newest_stamp_s == 10.5
    assert any("backwards" in r.getMessage() for r in caplog.records)
    s = mem.stats()
    assert s["resets"] == 1 and s["evicted_reset"] == 5
    for i in range(5):
        assert mem.vector_of(i) is None


def test_equal_stamps_and_sub_microsecond_jitter_are_allowed():
    mem = TemporalMemory(4, capacity=10, ttl_s=1.0)
    for i in range(3):
        assert mem.insert(i, 5.0, unit([1, i, 0, 0])).reset is False
    assert mem.insert(3, 5.0 - 0.5 * BACKWARDS_TOLERANCE_S, unit([0, 1, 0, 0])).reset is False
    assert mem.size == 4
    assert mem.newest_stamp_s == 5.0
    assert mem.insert(4, 5.0 - 3 * BACKWARDS_TOLERANCE_S, unit([0, 1, 1, 0])).reset is True


def test_jittered_stamps_never_leave_an_expired_entry():
    # Stamps jitter below the running max by less than the tolerance; the TTL law
    # (nothing older than newest - ttl is stored) must still hold at every step.
    rng = np.random.default_rng(4)
    v = walk(rng, 400, 8)
    mem = TemporalMemory(8, capacity=1000, ttl_s=0.5)
    newest = -math.inf
    for i in range(400):
        t = i * 0.01 - (0.9e-6 if i % 3 == 1 else 0.0)
        assert mem.insert(i, t, v[i]).reset is False
        newest = max(newest, t)
        stamps = [e.stamp_s for e in mem.entries()]
        assert min(stamps) >= newest - 0.5
        assert all(h.stamp_s >= newest - 0.5 for h in mem.knn(v[i], k=1000))
        assert mem.size >= min(i + 1, 49)  # and the window still holds ~0.5 s of frames


def test_future_stamp_refused_only_relative_to_now():
    mem = TemporalMemory(4, capacity=10, ttl_s=30.0, max_future_s=5.0)
    mem.insert(0, 99.0, unit([1, 0, 0, 0]), now_s=100.0)
    with pytest.raises(MemoryInputError, match=r"stamp_s=105\.5"):
        mem.insert(1, 105.5, unit([0, 1, 0, 0]), now_s=100.0)
    assert seqs(mem.entries()) == [0]
    assert mem.stats()["rejected"] == 1
    assert mem.insert(2, 105.0, unit([0, 1, 0, 0]), now_s=100.0).window_size == 2  # boundary accepted
    assert mem.insert(3, 1e6, unit([0, 0, 1, 0])).window_size == 1  # no now_s (bag replay): no check
    with pytest.raises(MemoryInputError, match="stamp_s"):
        mem.insert(4, float("nan"), unit([0, 0, 1, 0]))


# ---------------------------------------------------------------------- input validation


@pytest.mark.parametrize(
    "bad, pattern",
    [
        (np.ones(5, dtype=np.float32), r"expected shape \(4,\), got shape \(5,\)"),
        (np.ones((2, 4), dtype=np.float32), r"expected shape \(4,\), got shape \(2, 4\)"),
        (np.array([1.0, np.nan, 0.0, 0.0]), r"non-finite \(NaN/Inf\).*index 1"),
        (np.array([1.0, 0.0, np.inf, 0.0]), r"non-finite \(NaN/Inf\).*index 2"),
        (np.zeros(4), r"zero-norm"),
        ("abcd", r"expected a numeric array"),
    ],
)
def test_bad_vectors_rejected_and_window_unchanged(bad, pattern):
    mem = TemporalMemory(4, capacity=3, ttl_s=10.0)
    for i in range(3):
        mem.insert(i, float(i), unit([1, i, 0, 0]))
    before = mem.entries()
    with pytest.raises(MemoryInputError, match=pattern):
        mem.insert(7, 3.0, bad)
    assert mem.entries() == before
    assert mem.vector_of(7) is None
    s = mem.stats()
    assert s["rejected"] == 1 and s["inserts"] == 3 and s["evicted_capacity"] == 0
    with pytest.raises(MemoryInputError, match=pattern):
        mem.knn(bad)
    assert mem.stats()["rejected_queries"] == 1


def test_other_bad_arguments():
    mem = TemporalMemory(4)
    with pytest.raises(MemoryInputError, match="sequence"):
        mem.insert(1.5, 0.0, unit([1, 0, 0, 0]))
    with pytest.raises(MemoryInputError, match="k"):
        mem.knn(unit([1, 0, 0, 0]), k=0)
    with pytest.raises(MemoryInputError, match="below min_age_s"):
        mem.knn(unit([1, 0, 0, 0]), min_age_s=2.0, max_age_s=1.0)
    with pytest.raises(MemoryInputError, match="lookback_s"):
        mem.lookback(unit([1, 0, 0, 0]), 0.0)
    assert issubclass(MemoryInputError, ValueError)
    for kwargs in ({"capacity": 0}, {"ttl_s": 0.0}, {"space": "l2"}, {"M": 1}, {"dim": 0}):
        with pytest.raises(ValueError):
            TemporalMemory(**{"dim": 4, **kwargs})


def test_vectors_renormalised():
    mem = TemporalMemory(3, capacity=4)
    mem.insert(0, 0.0, [3.0, 0.0, 4.0])
    stored = mem.vector_of(0)
    assert stored.dtype == np.float32
    np.testing.assert_allclose(stored, [0.6, 0.0, 0.8], atol=1e-7)
    (hit,) = mem.knn([0.0, 0.0, 10.0], k=1)
    assert hit.similarity == pytest.approx(0.8, abs=1e-6)


# ---------------------------------------------------------------------- recall with replace-deleted


@pytest.mark.parametrize("ttl_gaps", [False, True])
def test_replace_deleted_keeps_recall(ttl_gaps):
    # 5x capacity inserts: every graph slot has been replaced ~5 times.  With TTL
    # gaps, large runs are deleted at once and then refilled through replace_deleted.
    dim, cap, n = 64, 800, 4000
    rng = np.random.default_rng(5)
    data = walk(rng, n, dim)
    mem = TemporalMemory(dim, capacity=cap, ttl_s=(20.0 if ttl_gaps else 1e9), ef_search=64)
    t = 0.0
    stamps = np.empty(n)
    for i in range(n):
        t += 30.0 if (ttl_gaps and i % 1000 == 700) else 0.01
        stamps[i] = t
        mem.insert(i, t, data[i])
    window_ids = [e.sequence for e in mem.entries()]
    # First principles: the window is the last `cap` inserts, cut at the last TTL gap.
    expected = list(range(n - cap, n))
    if ttl_gaps:
        expected = [i for i in expected if stamps[i] >= stamps[-1] - 20.0]
    assert window_ids == expected
    wv = data[window_ids]
    # Queries: perturbed window frames plus the walk continuing past the newest frame.
    picks = rng.integers(0, len(window_ids), 80)
    qs = wv[picks] + step_sigma(dim) * rng.standard_normal((80, dim)).astype(np.float32)
    qs = np.vstack([qs, walk(np.random.default_rng(6), 20, dim, start=data[-1])])
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    recalls = []
    for q in qs:
        got = seqs(mem.knn(q, k=10))
        exp = brute_knn(wv, window_ids, q, 10)
        assert set(got) <= set(window_ids)
        recalls.append(len(set(got) & set(exp)) / 10)
    assert np.mean(recalls) >= 0.95
    assert mem.stats()["queries_hnsw"] >= len(qs) - mem.stats()["hnsw_fallbacks"]
    assert mem.stats()["queries_hnsw"] > 0


def test_hnsw_never_returns_evicted_even_for_its_exact_vector():
    dim, cap = 32, 300
    rng = np.random.default_rng(7)
    data = walk(rng, 1500, dim)
    mem = TemporalMemory(dim, capacity=cap, ttl_s=1e9)
    for i in range(1500):
        mem.insert(i, i * 0.01, data[i])
    for old in (0, 600, 1199):  # each evicted; querying its own vector must not find it
        hits = mem.knn(data[old], k=50)
        assert len(hits) == 50
        assert all(1200 <= h.sequence < 1500 for h in hits)


# ---------------------------------------------------------------------- time-restricted knn


def _filled_memory(dim, n, cap, exact_threshold, seed):
    rng = np.random.default_rng(seed)
    data = walk(rng, n, dim)
    # Irregular frame times (gate skips frames), some equal stamps.
    dts = rng.choice([0.0, 0.02, 0.033, 0.1, 0.5], size=n, p=[0.05, 0.3, 0.45, 0.15, 0.05])
    stamps = np.cumsum(dts) + 1000.0
    mem = TemporalMemory(dim, capacity=cap, ttl_s=1e9, exact_threshold=exact_threshold)
    for i in range(n):
        mem.insert(i, float(stamps[i]), data[i])
    return mem, data, stamps


@pytest.mark.parametrize(
    "min_age, max_age, exclude",
    [(0.0, 1e9, None), (0.0, 1.0, None), (2.0, None, None), (1.0, 3.0, None), (0.0, None, "newest"),
     (5.0, 6.0, "mid"), (100.0, None, None), (0.5, 0.5, None)],
)
def test_knn_time_range_exact_path_matches_brute_force(min_age, max_age, exclude):
    dim, n, cap = 32, 500, 400
    mem, data, stamps = _filled_memory(dim, n, cap, exact_threshold=10**9, seed=8)
    ids = list(range(n - cap, n))
    newest = stamps[-1]
    excl = {None: None, "newest": n - 1, "mid": n - 150}[exclude]
    ok = [i for i in ids if min_age <= newest - stamps[i] and (max_age is None or newest - stamps[i] <= max_age)
          and i != excl]
    rng = np.random.default_rng(12)
    okset = set(ok)
    exact_before = mem.stats()["queries_exact"]
    for j in (n - 1, n - 60, n - 300, n - 399):
        q = unit(data[j] + 3 * step_sigma(dim) * rng.standard_normal(dim))
        hits = mem.knn(q, k=7, min_age_s=min_age, max_age_s=max_age, exclude_sequence=excl)
        exp = brute_knn(data[ok], ok, q, 7) if ok else []
        assert len(hits) == len(exp)
        assert set(seqs(hits)) <= okset
        # The exact path must return the true top-k: same similarities as brute force
        # (ids compared through similarities so float32/float64 near-ties can't flake).
        got_sims = [float(data[h.sequence].astype(np.float64) @ q) for h in hits]
        exp_sims = [float(data[i].astype(np.float64) @ q) for i in exp]
        np.testing.assert_allclose(got_sims, exp_sims, atol=1e-5)
        for h in hits:
            assert h.stamp_s == stamps[h.sequence]
            assert h.similarity == pytest.approx(float(data[h.sequence] @ q), abs=1e-5)
    if ok:
        assert mem.stats()["queries_exact"] == exact_before + 4


@pytest.mark.parametrize("min_age, max_age, exclude", [(0.0, 3.0, None), (2.0, 20.0, None), (0.0, None, "newest"),
                                                        (1.0, 10.0, "mid")])
def test_knn_time_range_hnsw_filter_path(min_age, max_age, exclude):
    dim, n, cap = 32, 2500, 2000
    mem, data, stamps = _filled_memory(dim, n, cap, exact_threshold=0, seed=9)  # force HNSW + filter
    ids = list(range(n - cap, n))
    newest = stamps[-1]
    excl = {None: None, "newest": n - 1, "mid": n - 150}[exclude]
    ok = [i for i in ids if min_age <= newest - stamps[i] and (max_age is None or newest - stamps[i] <= max_age)
          and i != excl]
    okset = set(ok)
    assert len(ok) > 20
    rng = np.random.default_rng(10)
    recalls = []
    before = mem.stats()["queries_hnsw"]
    for j in rng.choice(ok, 30):
        q = unit(data[j] + step_sigma(dim) * rng.standard_normal(dim))
        hits = mem.knn(q, k=10, min_age_s=min_age, max_age_s=max_age, exclude_sequence=excl)
        assert set(seqs(hits)) <= okset  # the filter is a hard rule, not a hint
        assert len(hits) == min(10, len(ok))
        recalls.append(len(set(seqs(hits)) & set(brute_knn(data[ok], ok, q, 10))) / 10)
    assert np.mean(recalls) >= 0.9
    assert mem.stats()["queries_hnsw"] > before


def test_knn_empty_and_small_windows():
    mem = TemporalMemory(4, capacity=10)
    assert mem.knn(unit([1, 0, 0, 0])) == []
    assert mem.knn(unit([1, 0, 0, 0]), min_age_s=1.0) == []
    mem.insert(0, 0.0, unit([1, 0, 0, 0]))
    mem.insert(1, 1.0, unit([0, 1, 0, 0]))
    hits = mem.knn(unit([1, 1, 0, 0]), k=5)
    assert len(hits) == 2
    assert hits[0].similarity == pytest.approx(math.sqrt(0.5), abs=1e-6)
    assert seqs(mem.knn(unit([0, 1, 0, 0]), k=5, exclude_sequence=1)) == [0]
    assert mem.knn(unit([1, 0, 0, 0]), min_age_s=1.5) == []


# ---------------------------------------------------------------------- nearest_in_time and lookback


@pytest.fixture
def handmade():
    # Stamps 0, 0.5, 1, 2, 4 with basis vectors e0..e4.
    mem = TemporalMemory(5, capacity=10, ttl_s=100.0)
    for i, t in enumerate([0.0, 0.5, 1.0, 2.0, 4.0]):
        mem.insert(10 + i, t, np.eye(5)[i])
    return mem


@pytest.mark.parametrize("t, seq", [(1.4, 12), (1.6, 13), (1.5, 13), (-10.0, 10), (100.0, 14), (0.25, 11),
                                    (2.0, 13)])
def test_nearest_in_time(handmade, t, seq):
    # 1.5 is equidistant from 1.0 and 2.0 (tie -> the newer); 0.25 ties 0.0 / 0.5.
    e = handmade.nearest_in_time(t)
    assert e.sequence == seq and math.isnan(e.similarity)
    assert e.stamp_s == {10: 0.0, 11: 0.5, 12: 1.0, 13: 2.0, 14: 4.0}[seq]


def test_nearest_in_time_with_vector_and_empty():
    mem = TemporalMemory(5)
    assert mem.nearest_in_time(1.0) is None
    mem.insert(3, 1.0, np.eye(5)[0])
    e = mem.nearest_in_time(7.0, vector=[1.0, 1.0, 0, 0, 0])
    assert e.sequence == 3 and e.similarity == pytest.approx(math.sqrt(0.5), abs=1e-6)


def test_lookback_on_handmade_stamps(handmade):
    v = unit([0, 0, 1, 1, 0])  # cos sqrt(.5) to e2 and e3, 0 to the rest
    # newest = 4: 2 s ago -> t=2 exactly.
    e = handmade.lookback(v, 2.0)
    assert (e.sequence, e.stamp_s) == (13, 2.0) and e.similarity == pytest.approx(math.sqrt(0.5), abs=1e-6)
    # 3 s ago -> t=1.
    assert handmade.lookback(v, 3.0).sequence == 12
    # 1 s ago -> t=3: nearest stored are 2 and 4, both 1 s away > default tolerance 0.5.
    assert handmade.lookback(v, 1.0) is None
    assert handmade.lookback(v, 1.0, tolerance_s=1.0).sequence == 14  # tie -> newer
    # 2.4 s ago -> t=1.6: 2.0 is 0.4 away: inside the default 1.2, outside 0.1.
    assert handmade.lookback(v, 2.4).sequence == 13
    assert handmade.lookback(v, 2.4, tolerance_s=0.1) is None
    # Before the history starts: t=-6, nearest 0.0 is 6 s off.
    assert handmade.lookback(v, 10.0) is None
    # For a frame about to be inserted at t=5: 1 s ago -> the frame at 4.
    e = handmade.lookback(v, 1.0, at_stamp_s=5.0)
    assert e.sequence == 14 and e.similarity == pytest.approx(0.0, abs=1e-6)
    assert TemporalMemory(5).lookback(v, 2.0) is None


# ---------------------------------------------------------------------- misc API


def test_duplicate_sequence_vector_of_is_newest_and_survives_old_eviction():
    mem = TemporalMemory(3, capacity=2, ttl_s=100.0)
    mem.insert(7, 0.0, [1, 0, 0])
    mem.insert(7, 1.0, [0, 1, 0])
    np.testing.assert_allclose(mem.vector_of(7), [0, 1, 0])
    mem.insert(8, 2.0, [0, 0, 1])  # evicts the first 7, the second stays
    np.testing.assert_allclose(mem.vector_of(7), [0, 1, 0])
    assert [e.sequence for e in mem.knn([1, 1, 1], k=5, exclude_sequence=7)] == [8]


def test_clear_and_stats_keys():
    mem = TemporalMemory(3, capacity=4, ttl_s=9.0)
    mem.insert(0, 0.0, [1, 0, 0])
    mem.clear()
    assert mem.size == 0 and mem.knn([1, 0, 0]) == [] and mem.vector_of(0) is None
    mem.insert(1, 0.0, [1, 0, 0])  # not "backwards": the window was cleared
    s = mem.stats()
    for key in ("size", "capacity", "ttl_s", "inserts", "evicted_ttl", "evicted_capacity", "resets", "rejected"):
        assert key in s
    assert (s["size"], s["capacity"], s["ttl_s"], s["inserts"], s["resets"]) == (1, 4, 9.0, 2, 0)
    assert (mem.dim, mem.capacity, len(mem)) == (3, 4, 1)
    assert isinstance(mem.knn([1, 0, 0])[0], MemoryEntry)


# ---------------------------------------------------------------------- thread safety


def test_thread_safety_smoke():
    dim, cap, ttl, n, dt = 32, 200, 1.5, 3000, 0.01
    data = walk(np.random.default_rng(11), n, dim)
    mem = TemporalMemory(dim, capacity=cap, ttl_s=ttl, exact_threshold=50)
    done = threading.Event()
    errors: list[BaseException] = []
    query_counts = [0, 0]

    def writer():
        try:
            for i in range(n):
                mem.insert(i, i * dt, data[i])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            done.set()

    def reader(idx):
        rng = np.random.default_rng(100 + idx)
        try:
            while not done.is_set():
                q = data[rng.integers(0, n)]
                hits = mem.knn(q, k=8, min_age_s=float(rng.choice([0.0, 0.2])),
                               max_age_s=float(rng.choice([1.0, 2.0])) if idx else None)
                assert len(hits) <= 8
                sims = [h.similarity for h in hits]
                assert sims == sorted(sims, reverse=True)
                for h in hits:
                    # Stamps travel with their own frame (no torn entries).
                    assert h.stamp_s == pytest.approx(h.sequence * dt)
                    assert h.similarity == pytest.approx(float(data[h.sequence] @ q), abs=1e-5)
                if hits:
                    # All hits from one consistent window: within ttl of each other.
                    assert max(h.stamp_s for h in hits) - min(h.stamp_s for h in hits) <= ttl + 1e-9
                assert mem.size <= cap
                e = mem.lookback(q, 0.5)
                if e is not None:
                    assert e.stamp_s == pytest.approx(e.sequence * dt)
                mem.nearest_in_time(float(rng.uniform(0, n * dt)))
                v = mem.vector_of(int(rng.integers(0, n)))
                assert v is None or v.shape == (dim,)
                assert mem.stats()["size"] <= cap
                query_counts[idx] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader, args=(j,)) for j in (0, 1)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not any(th.is_alive() for th in threads)
    assert not errors, errors[0]
    assert sum(query_counts) > 0
    # Final state is what the rules say: entries within ttl of the last stamp.
    last = (n - 1) * dt
    expected = [i for i in range(n - cap, n) if i * dt >= last - ttl]
    assert seqs(mem.entries()) == expected
    s = mem.stats()
    assert s["inserts"] == n and s["rejected"] == 0 and s["resets"] == 0


# ---------------------------------------------------------------------- ages from an explicit reference time


def test_knn_ages_from_at_stamp(handmade):
    # Stamps 0, 0.5, 1, 2, 4 (seqs 10..14) with basis vectors e0..e4.
    q = unit([1, 1, 1, 1, 1])
    # At t=2: entries after 2 have negative age and never qualify.
    assert sorted(seqs(handmade.knn(q, k=10, at_stamp_s=2.0))) == [10, 11, 12, 13]
    # At t=2, at least 1 s old: stamps <= 1.
    assert sorted(seqs(handmade.knn(q, k=10, min_age_s=1.0, at_stamp_s=2.0))) == [10, 11, 12]
    # At t=2, between 0.5 and 1.5 s old: stamps 0.5 and 1.
    assert sorted(seqs(handmade.knn(q, k=10, min_age_s=0.5, max_age_s=1.5, at_stamp_s=2.0))) == [11, 12]
    # A reference after the newest frame: every entry qualifies, ages measured from it.
    assert sorted(seqs(handmade.knn(q, k=10, at_stamp_s=10.0))) == [10, 11, 12, 13, 14]
    assert seqs(handmade.knn(q, k=10, max_age_s=7.0, at_stamp_s=10.0)) == [14]
    assert handmade.knn(q, k=10, at_stamp_s=-1.0) == []
    with pytest.raises(MemoryInputError, match="at_stamp_s"):
        handmade.knn(q, at_stamp_s=float("nan"))


# ---------------------------------------------------------------------- time-strided coarse scan


@pytest.mark.parametrize("min_age, max_age, exclude", [(0.0, None, None), (0.0, 250.0, None), (10.0, None, "mid")])
def test_coarse_scan_merge_on_a_wrapped_ring(min_age, max_age, exclude):
    # 3500 inserts into 3000 slots (the window wraps the ring); coarse_rows 400 -> stride 8 over the
    # whole window, 6 over the 250 s (2001-frame) range. Stamps are exact binary fractions (1/8 s), so
    # the age bounds are exact too.
    dim, cap, n, dt = 64, 3000, 3500, 0.125
    rng = np.random.default_rng(13)
    data = walk(rng, n, dim)
    mem = TemporalMemory(dim, capacity=cap, ttl_s=1e9, coarse_rows=400, coarse_min_span=0, exact_threshold=0)
    for i in range(n):
        mem.insert(i, i * dt, data[i])
    newest = (n - 1) * dt
    excl = {None: None, "mid": n - 1000}[exclude]
    ok = [i for i in range(n - cap, n) if min_age <= newest - i * dt and (max_age is None or newest - i * dt <= max_age)
          and i != excl]
    okset = set(ok)
    before = mem.stats()["queries_coarse"]
    for j in rng.choice(ok, 25):
        # The stored frame itself: its own similarity (1.0) is the maximum, so it must come first.
        hits = mem.knn(data[j], k=10, min_age_s=min_age, max_age_s=max_age, exclude_sequence=excl)
        assert hits[0].sequence == j and hits[0].similarity == pytest.approx(1.0, abs=1e-5)
        assert set(seqs(hits)) <= okset
        # A perturbed view: same similarities as brute force over the qualifying frames.
        qv = unit(data[j] + step_sigma(dim) * rng.standard_normal(dim))
        got = mem.knn(qv, k=10, min_age_s=min_age, max_age_s=max_age, exclude_sequence=excl)
        assert set(seqs(got)) <= okset
        exp = sorted((float(data[i].astype(np.float64) @ qv) for i in ok), reverse=True)[:10]
        np.testing.assert_allclose([h.similarity for h in got], exp, atol=1e-5)
    assert mem.stats()["queries_coarse"] == before + 50


def test_coarse_scan_off_and_bad_arguments():
    with pytest.raises(ValueError, match="coarse_rows"):
        TemporalMemory(4, coarse_rows=-1)
    with pytest.raises(ValueError, match="coarse_top"):
        TemporalMemory(4, coarse_top=0)
    with pytest.raises(ValueError, match="coarse_min_span"):
        TemporalMemory(4, coarse_min_span=-1)
    rng = np.random.default_rng(14)
    data = walk(rng, 600, 16)
    mem = TemporalMemory(16, capacity=500, ttl_s=1e9, coarse_rows=0)
    for i in range(600):
        mem.insert(i, i * 0.1, data[i])
    mem.knn(data[300], k=5)
    assert mem.stats()["queries_coarse"] == 0 and mem.stats()["queries_hnsw"] == 1
    # On, but the 500-frame span is below its minimum span (default 8192): HNSW alone; with a
    # minimum of 0 (and 500 > 100 samples) the pass runs.
    for min_span, expect in ((None, 0), (0, 1)):
        kw = {} if min_span is None else {"coarse_min_span": min_span}
        mem = TemporalMemory(16, capacity=500, ttl_s=1e9, coarse_rows=100, **kw)
        for i in range(600):
            mem.insert(i, i * 0.1, data[i])
        mem.knn(data[300], k=5)
        assert mem.stats()["queries_coarse"] == expect


@pytest.mark.parametrize("n, cap", [(700, 1000), (1300, 1000), (1999, 1000)])
def test_coarse_samples_are_aligned_to_the_newest_entry(n, cap):
    # Whatever the ring phase, the newest entry of the span is a sample, so a query equal to the newest
    # frame finds it through the coarse pass alone (no HNSW), and every returned position is in the span.
    dim = 16
    data = walk(np.random.default_rng(15), n, dim)
    mem = TemporalMemory(dim, capacity=cap, ttl_s=1e9, coarse_rows=7, coarse_min_span=0)
    for i in range(n):
        mem.insert(i, i * 0.1, data[i])
    size = min(n, cap)
    for hi in (size, size - 3):
        pos, sims = mem._coarse_candidates(data[n - size + hi - 1], 10, 0, hi, None)
        assert (hi - 1) in pos.tolist()
        assert pos.min() >= 0 and pos.max() < hi
        for p, s_ in zip(pos.tolist(), sims.tolist()):
            assert s_ == pytest.approx(float(data[n - size + p] @ data[n - size + hi - 1]), abs=1e-5)


# ---------------------------------------------------------------------- deferred graph insert


def test_a_deferred_frame_is_found_at_once_and_the_graph_ends_up_the_same():
    # defer_index: the memory node answers a frame's queries and publishes before hnswlib's insert. The frame
    # must be found before the flush (exact scans, lookback; a graph query flushes first), and the graph built
    # with deferral must answer exactly as one built insert by insert (same vectors, order and seed).
    rng = np.random.default_rng(5)
    vecs = walk(rng, 120, 32)
    deferred = TemporalMemory(dim=32, capacity=50, ttl_s=1e9, random_seed=3)
    immediate = TemporalMemory(dim=32, capacity=50, ttl_s=1e9, random_seed=3)
    for i, v in enumerate(vecs):
        deferred.insert(i, i * 0.1, v, defer_index=True)
        immediate.insert(i, i * 0.1, v)
        if i >= 10:
            assert seqs(deferred.knn(v, k=1, exclude_sequence=i - 1)) == [i]     # exact scan, before the flush
            assert deferred.lookback(v, 0.1).sequence == i - 1                      # the stored stamps
        if i % 3 == 0:
            assert seqs(deferred.knn(v, k=3))[0] == i                               # a graph query flushes first
        else:
            deferred.flush_index()
    deferred.flush_index()
    for q in walk(rng, 20, 32):
        assert seqs(deferred.knn(q, k=5)) == seqs(immediate.knn(q, k=5))


def test_deferred_frames_evicted_before_a_flush_leave_the_graph_consistent():
    rng = np.random.default_rng(6)
    vecs = walk(rng, 30, 16)
    window = TemporalMemory(dim=16, capacity=5, ttl_s=1e9)
    for i, v in enumerate(vecs):
        window.insert(i, float(i), v, defer_index=True)     # never flushed by hand: evictions flush first
    assert window.size == 5
    q = vecs[-1]
    assert seqs(window.knn(q, k=5)) == brute_knn(vecs[-5:], list(range(25, 30)), q, 5)
