#!/usr/bin/env python3
"""Benchmark the temporal memory at steady-state eviction.

For each window size: fill the window, then run the steady state (every insert
evicts the oldest frame) and time inserts and queries; recall@10 is measured
against an exact numpy search over the same window, and the exact numpy search
itself is timed in the same run as the baseline.

Data: a random walk on the unit sphere (consecutive cosine ~0.98, like video
frames), dim 384, stamps at 30 Hz.  Never uniform random vectors: on those HNSW
recall and insert cost say nothing about video.

Queries alternate between the frame just inserted ("what does now look like")
and a perturbed copy of a random window frame (a revisited place).

Engines:
  temporal_memory       TemporalMemory.knn, unrestricted (hnswlib graph)
  temporal_memory_age1s TemporalMemory.knn(min_age_s=1.0) ("seen this before?",
                        skipping the last second: exact slice scan or hnswlib+filter)
  exact_numpy           ring buffer + brute-force inner product (baseline)

Noise: on a loaded host, multithreaded OpenBLAS makes the numpy matvecs (exact
baseline and the exact slice scan) spike to several ms at p50/p99; run with
OPENBLAS_NUM_THREADS=1 for stable figures (and consider it for the nodes too).

Usage: python bench/memory.py [--windows 300,3000,30000] [--steady 2000] [--json PATH]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time

import numpy as np

try:
    from vidaction_ros.memory import TemporalMemory
except ImportError:  # running from a source checkout without an installed package
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from vidaction_ros.memory import TemporalMemory

DIM = 384
FPS = 30.0
K = 10


def rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def walk(rng: np.random.Generator, n: int, dim: int, cos: float = 0.98) -> np.ndarray:
    sigma = math.sqrt((1.0 / cos**2 - 1.0) / dim)
    v = rng.standard_normal(dim)
    v /= np.linalg.norm(v)
    out = np.empty((n, dim), dtype=np.float32)
    steps = rng.standard_normal((n, dim)) * sigma
    for i in range(n):
        v = v + steps[i]
        v /= np.linalg.norm(v)
        out[i] = v
    return out


class ExactRing:
    """Baseline: ring buffer of vectors + brute-force inner-product search."""

    def __init__(self, dim: int, capacity: int):
        self.vecs = np.zeros((capacity, dim), dtype=np.float32)
        self.stamps = np.full(capacity, -np.inf)
        self.ids = np.full(capacity, -1, dtype=np.int64)
        self.capacity = capacity
        self.n = 0

    def insert(self, seq: int, stamp: float, v: np.ndarray) -> None:
        slot = self.n % self.capacity
        self.vecs[slot] = v
        self.stamps[slot] = stamp
        self.ids[slot] = seq
        self.n += 1

    def knn(self, q: np.ndarray, k: int, newest: float | None = None, min_age: float = 0.0) -> list[int]:
        m = min(self.n, self.capacity)
        scores = self.vecs[:m] @ q
        if newest is not None:
            scores = np.where(newest - self.stamps[:m] >= min_age, scores, -np.inf)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.isfinite(scores[top])]
        return self.ids[top[np.argsort(-scores[top])]].tolist()


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1e3, p)) if xs else float("nan")


def bench_window(window: int, steady: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    n = window + steady
    data = walk(rng, n, DIM)
    stamps = np.arange(n) / FPS
    n_queries = min(steady, 400)
    query_every = max(1, steady // n_queries)
    results = []

    # --- the exact baseline first: it is also the recall reference for the others.
    gc.collect()
    rss0 = rss_mb()
    exact = ExactRing(DIM, window)
    for i in range(window):
        exact.insert(i, stamps[i], data[i])
    ins, qry = [], []
    truth, truth_age = {}, {}
    queries = {}
    for i in range(window, n):
        t0 = time.perf_counter()
        exact.insert(i, stamps[i], data[i])
        ins.append(time.perf_counter() - t0)
        if (i - window) % query_every == 0:
            if (i // query_every) % 2 == 0:
                q = data[i]
            else:
                j = int(rng.integers(i - window + 1, i + 1))
                q = data[j] + 0.2 * (rng.standard_normal(DIM) / math.sqrt(DIM)).astype(np.float32)
                q = (q / np.linalg.norm(q)).astype(np.float32)
            queries[i] = q
            t0 = time.perf_counter()
            truth[i] = exact.knn(q, K)
            qry.append(time.perf_counter() - t0)
            truth_age[i] = exact.knn(q, K, newest=stamps[i], min_age=1.0)
    results.append(dict(engine="exact_numpy", window=window, insert_p50_ms=pct(ins, 50), insert_p99_ms=pct(ins, 99),
                        query_p50_ms=pct(qry, 50), query_p99_ms=pct(qry, 99), recall_at_10=1.0,
                        rss_mb=rss_mb(), rss_delta_mb=rss_mb() - rss0))
    del exact
    gc.collect()

    # --- TemporalMemory (hnswlib), same stream, same queries.
    rss0 = rss_mb()
    mem = TemporalMemory(DIM, capacity=window, ttl_s=1e9)
    t_fill = time.perf_counter()
    for i in range(window):
        mem.insert(i, float(stamps[i]), data[i])
    t_fill = time.perf_counter() - t_fill
    ins, qry, qry_age, rec, rec_age = [], [], [], [], []
    for i in range(window, n):
        t0 = time.perf_counter()
        res = mem.insert(i, float(stamps[i]), data[i])
        ins.append(time.perf_counter() - t0)
        assert res.window_size == window and res.evicted == 1
        if i in queries:
            q = queries[i]
            t0 = time.perf_counter()
            hits = mem.knn(q, k=K)
            qry.append(time.perf_counter() - t0)
            rec.append(len({h.sequence for h in hits} & set(truth[i])) / K)
            t0 = time.perf_counter()
            hits = mem.knn(q, k=K, min_age_s=1.0)
            qry_age.append(time.perf_counter() - t0)
            exp = truth_age[i]
            rec_age.append(len({h.sequence for h in hits} & set(exp)) / max(1, len(exp)))
    stats = mem.stats()
    common = dict(window=window, insert_p50_ms=pct(ins, 50), insert_p99_ms=pct(ins, 99),
                  fill_s=t_fill, rss_mb=rss_mb(), rss_delta_mb=rss_mb() - rss0)
    results.append(dict(engine="temporal_memory", query_p50_ms=pct(qry, 50), query_p99_ms=pct(qry, 99),
                        recall_at_10=float(np.mean(rec)), **common))
    results.append(dict(engine="temporal_memory_age1s", query_p50_ms=pct(qry_age, 50),
                        query_p99_ms=pct(qry_age, 99), recall_at_10=float(np.mean(rec_age)),
                        queries_exact=stats["queries_exact"], queries_hnsw=stats["queries_hnsw"],
                        hnsw_fallbacks=stats["hnsw_fallbacks"], **common))
    del mem
    gc.collect()
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", default="300,3000,30000", help="comma-separated window sizes (capacity)")
    ap.add_argument("--steady", type=int, default=2000, help="steady-state inserts (each evicts) per window")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="PATH", help="write results as JSON here")
    args = ap.parse_args(argv)
    windows = [int(w) for w in args.windows.split(",") if w.strip()]

    try:
        from importlib.metadata import version

        hnsw_version = version("hnswlib")
    except Exception:  # noqa: BLE001 - informational only
        hnsw_version = "?"

    results = []
    for w in windows:
        results.extend(bench_window(w, args.steady, args.seed))

    hdr = f"{'engine':<22} {'window':>7} {'ins p50':>8} {'ins p99':>8} {'qry p50':>8} {'qry p99':>8} {'rec@10':>7} {'rss MB':>7}"
    print(f"temporal memory: dim {DIM}, {args.steady} steady-state inserts per window, random walk cos~0.98, "
          f"{os.cpu_count()} CPUs, numpy {np.__version__}, hnswlib {hnsw_version}")
    print("times in ms")
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        print(f"{r['engine']:<22} {r['window']:>7} {r['insert_p50_ms']:>8.3f} {r['insert_p99_ms']:>8.3f} "
              f"{r['query_p50_ms']:>8.3f} {r['query_p99_ms']:>8.3f} {r['recall_at_10']:>7.3f} {r['rss_mb']:>7.0f}")
    if args.json:
        meta = dict(dim=DIM, k=K, fps=FPS, steady_inserts=args.steady, cpus=os.cpu_count(),
                    python=platform.python_version(), numpy=np.__version__,
                    hnswlib=hnsw_version, machine=platform.machine())
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
