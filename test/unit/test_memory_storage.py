"""Compact vector storage in TemporalMemory (float16 / int8 copies of the kept vectors).

Expected values come from first principles: the rounding bounds of each format (float16: relative
2^-11; int8 with a symmetric per-vector scale s = max|v| / 127: at most s/2 per component, so a
similarity is off by at most s/2 * ||q||_1), byte counts, and brute-force float64 numpy search.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from vidaction_ros.memory import STORAGE_CHOICES, TemporalMemory
from vidaction_ros.tools.memory_data import sphere_walk

DIM = 64


def filled(storage, n=600, cap=500, seed=0, **kw):
    rng = np.random.default_rng(seed)
    data = sphere_walk(rng, n, DIM, cos=0.98)
    mem = TemporalMemory(DIM, capacity=cap, ttl_s=1e9, storage=storage, **kw)
    for i in range(n):
        mem.insert(i, i * 0.1, data[i])
    return mem, data


def int8_bound(v: np.ndarray, q: np.ndarray) -> float:
    """Worst-case |stored . q - v . q| for int8 storage of v (plus float32 arithmetic slack)."""
    s = float(np.max(np.abs(v))) / 127.0
    return s / 2.0 * float(np.sum(np.abs(q))) + 1e-6


def test_storage_choices_and_bad_value():
    assert STORAGE_CHOICES == ('float32', 'float16', 'int8')
    with pytest.raises(ValueError, match='storage'):
        TemporalMemory(4, storage='int4')


@pytest.mark.parametrize('storage, per_vector', [('float32', 4 * 384), ('float16', 2 * 384), ('int8', 384 + 4)])
def test_vector_bytes_from_first_principles(storage, per_vector):
    mem = TemporalMemory(384, capacity=1000, storage=storage)
    assert mem.vector_bytes == 1000 * per_vector
    assert mem.stats()['vector_bytes'] == 1000 * per_vector and mem.stats()['storage'] == storage
    assert mem.storage == storage


def test_float16_and_int8_round_trip_within_their_rounding_bounds():
    rng = np.random.default_rng(1)
    vecs = rng.standard_normal((50, DIM))
    vecs[0] = 0.0
    vecs[0, 3] = 1.0  # a one-hot vector: exact in every format
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    m16 = TemporalMemory(DIM, capacity=50, ttl_s=1e9, storage='float16')
    m8 = TemporalMemory(DIM, capacity=50, ttl_s=1e9, storage='int8')
    for i, v in enumerate(vecs):
        m16.insert(i, float(i), v)
        m8.insert(i, float(i), v)
    for i, v in enumerate(vecs):
        got16, got8 = m16.vector_of(i), m8.vector_of(i)
        assert got16.dtype == np.float32 and got8.dtype == np.float32
        # float16: 11 significant bits -> relative error <= 2^-11 (normal range; these are ~0.1).
        np.testing.assert_allclose(got16, v, rtol=2.0**-11, atol=2.0**-24)
        s = np.max(np.abs(v)) / 127.0
        assert np.max(np.abs(got8 - v)) <= s / 2 * (1 + 1e-5) + 1e-7
        # The largest component is represented exactly (it maps to +-127).
        j = int(np.argmax(np.abs(v)))
        assert got8[j] == pytest.approx(v[j], rel=1e-6)
    np.testing.assert_array_equal(m8.vector_of(0), np.eye(DIM, dtype=np.float32)[3])


@pytest.mark.parametrize('storage', ['float16', 'int8'])
def test_reported_similarities_within_bound_on_every_path(storage):
    mem, data = filled(storage, exact_threshold=10**9)
    window = list(range(100, 600))
    rng = np.random.default_rng(2)
    for j in rng.integers(100, 600, 20):
        q = data[j] + 0.05 * rng.standard_normal(DIM)
        q /= np.linalg.norm(q)
        for hits in (mem.knn(q, k=10), mem.knn(q, k=10, min_age_s=5.0), mem.knn(q, k=10, max_age_s=3.0)):
            assert hits and set(h.sequence for h in hits) <= set(window)
            for h in hits:
                true = float(data[h.sequence].astype(np.float64) @ q)
                tol = int8_bound(data[h.sequence], q) if storage == 'int8' else 2.0**-11 * np.sum(np.abs(q)) + 1e-6
                assert abs(h.similarity - true) <= tol
        e = mem.lookback(q, 2.0)
        assert abs(e.similarity - float(data[e.sequence] @ q)) <= int8_bound(data[e.sequence], q)


@pytest.mark.parametrize('storage', ['float16', 'int8'])
def test_exact_scan_ranking_differs_only_inside_the_rounding_bound(storage):
    # The exact-scan path ranks by the stored (rounded) vectors. First principles: a frame can only
    # displace a better one when their true similarities differ by less than twice the rounding bound,
    # so every returned hit's true similarity reaches the true k-th best minus that margin.
    mem, data = filled(storage, exact_threshold=10**9)
    rng = np.random.default_rng(3)
    ok = np.arange(100, 600)
    for j in rng.integers(100, 600, 40):
        q = data[j] + 0.1 * rng.standard_normal(DIM)
        q /= np.linalg.norm(q)
        hits = mem.knn(q, k=10, max_age_s=1e6)  # restricted: the exact scan
        true = data[ok].astype(np.float64) @ q
        kth = np.sort(true)[-10]
        margin = 2 * max(int8_bound(data[i], q) for i in ok) if storage == 'int8' else 2 * 2.0**-11 * np.sum(np.abs(q))
        for h in hits:
            assert float(data[h.sequence] @ q) >= kth - margin - 1e-6
    assert mem.stats()['queries_exact'] >= 40


@pytest.mark.parametrize('storage', ['float16', 'int8'])
def test_window_rules_do_not_depend_on_storage(storage):
    a, data = filled('float32', n=900, cap=300, seed=4)
    b, _ = filled(storage, n=900, cap=300, seed=4)
    assert a.entries() == b.entries()
    q = data[-50]
    assert {h.sequence for h in a.knn(q, k=300)} == {h.sequence for h in b.knn(q, k=300)}
    assert a.nearest_in_time(50.0).sequence == b.nearest_in_time(50.0).sequence
    assert b.vector_of(0) is None and math.isclose(float(b.vector_of(899) @ data[899]), 1.0, abs_tol=5e-3)
