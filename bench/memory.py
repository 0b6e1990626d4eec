#!/usr/bin/env python3
"""Benchmark the temporal memory at steady-state eviction, against exact numpy search and qdrant.

For each window size: fill the window, then run the steady state (every insert evicts the oldest
frame) and time inserts and queries. In the same run, on the same data and the same queries:

  exact_numpy            ring buffer + brute-force inner product: the baseline, and the recall@10
                         reference for every other engine
  temporal_memory        TemporalMemory.knn, unrestricted (hnswlib graph, replace-deleted, merged with
                         the time-strided coarse scan above coarse_rows entries; --coarse-rows 0: HNSW alone)
  temporal_memory_age1s  TemporalMemory.knn(min_age_s=1.0) ("seen this before?", skipping the last
                         second: exact slice scan or hnswlib + filter)
  qdrant_memory          qdrant-client in ':memory:' local mode (the source articles' choice), up to
                         --qdrant-max entries; upsert + delete of the oldest point per insert. Skipped
                         with a note when qdrant-client is not installed.

Data (never uniform random vectors: HNSW recall on those is ~0.5 and says nothing about video): the
CPU backend's embeddings of the demo video's 795 frames (computed once, cached under
~/.cache/vidaction_ros/), extended by a random walk on the unit sphere whose step matches the real
frames' median consecutive cosine (vidaction_ros.tools.memory_data). Stamps at the video's 10 fps. Windows
larger than the video hold walk frames only once full; the 'real_video' rows measure recall on the real
frames alone (window = the whole video).

Queries alternate between the frame just inserted ("what does now look like") and a perturbed copy
(noise of norm 0.2) of a random window frame (a revisited place); recall is reported for both kinds.

Noise: on a loaded host, multithreaded OpenBLAS makes numpy matvecs spike; run with
OPENBLAS_NUM_THREADS=1 for stable figures (the bench sets it when unset).

Usage: python bench/memory.py [--windows 300,3000,30000,300000] [--steady 10000] [--json PATH]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: see "Noise" above

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

try:
    from vidaction_ros.memory import TemporalMemory
    from vidaction_ros.tools.memory_data import consecutive_cosine, extend_with_walk, video_embeddings, rss_mb
except ImportError:  # running from a source checkout without an installed package
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from vidaction_ros.memory import TemporalMemory
    from vidaction_ros.tools.memory_data import consecutive_cosine, extend_with_walk, video_embeddings, rss_mb

K = 10
NOISE = 0.2  # revisit queries: a window frame plus noise of this norm (cosine ~0.98 to the frame)


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1e3, p)) if xs else float("nan")


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


def recall(got, truth) -> float:
    return len(set(got) & set(truth)) / max(1, len(truth))


def make_queries(rng, data, window: int, n: int, n_queries: int):
    """{insert index: (kind, query vector)} spread evenly over the steady state."""
    steady = n - window
    every = max(1, steady // max(1, n_queries))
    dim = data.shape[1]
    out = {}
    for c, i in enumerate(range(window, n, every)):
        if c % 2 == 0:
            out[i] = ("now", data[i])
        else:
            j = int(rng.integers(i - window + 1, i + 1))
            q = data[j] + NOISE * (rng.standard_normal(dim) / math.sqrt(dim)).astype(np.float32)
            out[i] = ("revisit", (q / np.linalg.norm(q)).astype(np.float32))
    return out


def row(engine, window, data_kind, ins, qry, recs, rss0, **extra) -> dict:
    rec_all = [r for _, r in recs]
    by_kind = {kind: float(np.mean([r for k_, r in recs if k_ == kind]))
               for kind in ("now", "revisit") if any(k_ == kind for k_, _ in recs)}
    rss = rss_mb()
    return dict(engine=engine, window=window, data=data_kind,
                insert_p50_ms=pct(ins, 50), insert_p99_ms=pct(ins, 99),
                query_p50_ms=pct(qry, 50), query_p99_ms=pct(qry, 99),
                recall_at_10=float(np.mean(rec_all)) if rec_all else float("nan"),
                recall_now=by_kind.get("now", float("nan")), recall_revisit=by_kind.get("revisit", float("nan")),
                queries=len(qry), rss_mb=rss, rss_delta_mb=rss - rss0, **extra)


def bench_window(window: int, steady: int, real: np.ndarray, fps: float, seed: int, n_queries: int,
                 qdrant_max: int, qdrant_queries: int, index_kwargs: dict, log) -> list[dict]:
    rng = np.random.default_rng(seed)
    n = window + steady
    data = extend_with_walk(real, n, rng)
    dim = data.shape[1]
    stamps = np.arange(n) / fps
    queries = make_queries(rng, data, window, n, n_queries)
    results = []

    # --- exact baseline first: it is also the recall reference for the others.
    gc.collect()
    rss0 = rss_mb()
    exact = ExactRing(dim, window)
    for i in range(window):
        exact.insert(i, stamps[i], data[i])
    ins, qry, truth, truth_age = [], [], {}, {}
    for i in range(window, n):
        t0 = time.perf_counter()
        exact.insert(i, stamps[i], data[i])
        ins.append(time.perf_counter() - t0)
        if i in queries:
            q = queries[i][1]
            t0 = time.perf_counter()
            truth[i] = exact.knn(q, K)
            qry.append(time.perf_counter() - t0)
            truth_age[i] = exact.knn(q, K, newest=stamps[i], min_age=1.0)
    results.append(row("exact_numpy", window, "real+walk", ins, qry, [(queries[i][0], 1.0) for i in truth], rss0))
    del exact
    gc.collect()
    log(f"  exact_numpy done ({window})")

    # --- TemporalMemory (hnswlib), same stream, same queries.
    rss0 = rss_mb()
    mem = TemporalMemory(dim, capacity=window, ttl_s=1e9, **index_kwargs)
    t_fill = time.perf_counter()
    for i in range(window):
        mem.insert(i, float(stamps[i]), data[i])
    t_fill = time.perf_counter() - t_fill
    log(f"  temporal_memory filled {window} in {t_fill:.1f} s")
    ins, qry, qry_age, rec, rec_age = [], [], [], [], []
    for i in range(window, n):
        t0 = time.perf_counter()
        res = mem.insert(i, float(stamps[i]), data[i])
        ins.append(time.perf_counter() - t0)
        assert res.window_size == window and res.evicted == 1
        if i in queries:
            kind, q = queries[i]
            t0 = time.perf_counter()
            hits = mem.knn(q, k=K)
            qry.append(time.perf_counter() - t0)
            rec.append((kind, recall([h.sequence for h in hits], truth[i])))
            t0 = time.perf_counter()
            hits = mem.knn(q, k=K, min_age_s=1.0)
            qry_age.append(time.perf_counter() - t0)
            rec_age.append((kind, recall([h.sequence for h in hits], truth_age[i])))
    stats = mem.stats()
    results.append(row("temporal_memory", window, "real+walk", ins, qry, rec, rss0, fill_s=t_fill))
    results.append(row("temporal_memory_age1s", window, "real+walk", ins, qry_age, rec_age, rss0, fill_s=t_fill,
                       queries_exact=stats["queries_exact"], queries_hnsw=stats["queries_hnsw"],
                       hnsw_fallbacks=stats["hnsw_fallbacks"]))
    del mem
    gc.collect()

    # --- qdrant-client ':memory:' (pure-Python local mode), same stream; fewer queries (they are slow).
    if window <= qdrant_max:
        results.extend(bench_qdrant(window, data, stamps, queries, truth, qdrant_queries, log))
    return results


def qdrant_available() -> str | None:
    """None when qdrant-client's local mode works here, else the reason it does not."""
    try:
        from qdrant_client import QdrantClient  # noqa: F401
    except ImportError as err:
        return f"qdrant-client not installed ({err}); pip install qdrant-client"
    return None


def bench_qdrant(window, data, stamps, queries, truth, n_queries, log) -> list[dict]:
    from qdrant_client import QdrantClient, models

    gc.collect()
    rss0 = rss_mb()
    n, dim = data.shape
    client = QdrantClient(":memory:")
    name = "memory"
    client.create_collection(name, vectors_config=models.VectorParams(size=dim, distance=models.Distance.DOT))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "local mode is not recommended for > 20 000 points": we know
        for c0 in range(0, window, 1000):
            c1 = min(window, c0 + 1000)
            client.upsert(name, points=models.Batch(ids=list(range(c0, c1)), vectors=data[c0:c1].tolist(),
                                                    payloads=[{"stamp": float(t)} for t in stamps[c0:c1]]))
        picks = sorted(queries)
        step = max(1, len(picks) // max(1, n_queries))
        step += 1 - step % 2  # odd, so the picks alternate between 'now' and 'revisit' queries
        picks = set(picks[::step])
        ins, qry, rec = [], [], []
        for i in range(window, n):
            t0 = time.perf_counter()
            client.upsert(name, points=[models.PointStruct(id=i, vector=data[i].tolist(),
                                                           payload={"stamp": float(stamps[i])})])
            client.delete(name, points_selector=models.PointIdsList(points=[i - window]))
            ins.append(time.perf_counter() - t0)
            if i in picks:
                kind, q = queries[i]
                t0 = time.perf_counter()
                pts = client.query_points(name, query=q.tolist(), limit=K, with_payload=False).points
                qry.append(time.perf_counter() - t0)
                rec.append((kind, recall([p.id for p in pts], truth[i])))
    out = row("qdrant_memory", window, "real+walk", ins, qry, rec, rss0)
    client.close()
    del client
    gc.collect()
    log(f"  qdrant_memory done ({window})")
    return [out]


def bench_real(real: np.ndarray, fps: float, seed: int, index_kwargs: dict) -> list[dict]:
    """Recall and latency on the real frames alone: the whole video in the window, every frame queried
    as 'now' and a perturbed copy of a random frame as 'revisit'."""
    rng = np.random.default_rng(seed + 1)
    n, dim = real.shape
    mem = TemporalMemory(dim, capacity=n, ttl_s=1e9, **index_kwargs)
    rss0 = rss_mb()
    ins = []
    for i in range(n):
        t0 = time.perf_counter()
        mem.insert(i, i / fps, real[i])
        ins.append(time.perf_counter() - t0)
    qry, qry_exact, recs = [], [], []
    for i in range(n):
        for kind in ("now", "revisit"):
            if kind == "now":
                q = real[i]
            else:
                q = real[int(rng.integers(0, n))] + NOISE * rng.standard_normal(dim).astype(np.float32) / math.sqrt(dim)
                q = (q / np.linalg.norm(q)).astype(np.float32)
            t0 = time.perf_counter()
            scores = real @ q
            top = np.argpartition(-scores, K - 1)[:K]
            qry_exact.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            hits = mem.knn(q, k=K)
            qry.append(time.perf_counter() - t0)
            # Near-duplicate frames tie: count a hit as correct when its similarity reaches the true
            # 10th best (ids alone would penalise swapping two identical frames).
            kth = float(np.sort(scores[top])[0])
            recs.append((kind, float(np.mean([float(real[h.sequence] @ q) >= kth - 1e-6 for h in hits]))))
    exact_row = row("exact_numpy", n, "real", [], qry_exact, [(k_, 1.0) for k_, _ in recs], rss0)
    return [exact_row, row("temporal_memory", n, "real", ins, qry, recs, rss0)]


def print_table(results: list[dict]) -> None:
    base = {(r["window"], r["data"]): r for r in results if r["engine"] == "exact_numpy"}
    qd = {(r["window"], r["data"]): r for r in results if r["engine"] == "qdrant_memory"}
    hdr = (f"{'engine':<22} {'data':<9} {'window':>7} {'ins p50':>8} {'ins p99':>8} {'qry p50':>8} {'qry p99':>8} "
           f"{'rec@10':>6} {'now':>5} {'revis':>5} {'rss MB':>7} {'dRSS':>6} {'q99 x exact':>11} {'q99 x qdrant':>12}")
    print("times in ms; 'q99 x exact' / 'x qdrant' = that engine's query p99 / this row's (higher = faster)")
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        key = (r["window"], r["data"])
        vs_exact = base[key]["query_p99_ms"] / r["query_p99_ms"] if key in base else float("nan")
        vs_qd = qd[key]["query_p99_ms"] / r["query_p99_ms"] if key in qd else float("nan")
        print(f"{r['engine']:<22} {r['data']:<9} {r['window']:>7} "
              f"{r['insert_p50_ms']:>8.3f} {r['insert_p99_ms']:>8.3f} "
              f"{r['query_p50_ms']:>8.3f} {r['query_p99_ms']:>8.3f} {r['recall_at_10']:>6.3f} "
              f"{r['recall_now']:>5.2f} {r['recall_revisit']:>5.2f} {r['rss_mb']:>7.0f} {r['rss_delta_mb']:>6.0f} "
              f"{vs_exact:>11.1f} {vs_qd:>12.1f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", default="300,3000,30000,300000", help="comma-separated window sizes (capacity)")
    ap.add_argument("--steady", type=int, default=10000, help="steady-state inserts (each evicts) per window")
    ap.add_argument("--queries", type=int, default=400, help="queries per window (over the steady state)")
    ap.add_argument("--qdrant-max", type=int, default=30000, help="largest window also run on qdrant :memory:")
    ap.add_argument("--qdrant-queries", type=int, default=100, help="queries per window on qdrant (slow)")
    ap.add_argument("--no-real", action="store_true", help="skip the real-video-only recall rows")
    ap.add_argument("--ef-construction", type=int, help="TemporalMemory ef_construction (default: its own)")
    ap.add_argument("--ef-search", type=int, help="TemporalMemory ef_search (default: its own)")
    ap.add_argument("--M", type=int, help="TemporalMemory M (default: its own)")
    ap.add_argument("--coarse-rows", type=int, help="TemporalMemory coarse_rows (0 = HNSW alone; default: its own)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="PATH", help="write results as JSON here")
    args = ap.parse_args(argv)
    windows = [int(w) for w in args.windows.split(",") if w.strip()]
    index_kwargs = {k: v for k, v in (("ef_construction", args.ef_construction), ("ef_search", args.ef_search),
                                      ("M", args.M),
                                      ("coarse_rows", args.coarse_rows)) if v is not None}

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    from importlib.metadata import PackageNotFoundError, version

    def ver(pkg):
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    log("loading demo-video embeddings (computed once, then cached)...")
    real, real_stamps = video_embeddings(progress=lambda d, t: d % 200 == 0 and log(f"  embedded {d}/{t}"))
    fps = 1.0 / float(np.median(np.diff(real_stamps)))
    qdrant_skip = qdrant_available()
    if qdrant_skip:
        log(f"qdrant skipped: {qdrant_skip}")

    results = []
    if not args.no_real:
        results.extend(bench_real(real, fps, args.seed, index_kwargs))
    for w in windows:
        log(f"window {w}...")
        results.extend(bench_window(w, args.steady, real, fps, args.seed, args.queries,
                                    -1 if qdrant_skip else args.qdrant_max, args.qdrant_queries, index_kwargs, log))

    print(f"temporal memory: dim {real.shape[1]}, {args.steady} steady-state inserts per window, data: "
          f"{real.shape[0]} demo-video embeddings + random walk (median consecutive cos "
          f"{consecutive_cosine(real):.3f}), {os.cpu_count()} CPUs, numpy {np.__version__}, hnswlib {ver('hnswlib')}, "
          f"qdrant-client {ver('qdrant-client') or 'absent'}, index {index_kwargs or 'defaults'}")
    if qdrant_skip:
        print(f"qdrant: skipped ({qdrant_skip})")
    print_table(results)
    if args.json:
        meta = dict(dim=int(real.shape[1]), k=K, fps=fps, steady_inserts=args.steady, cpus=os.cpu_count(),
                    python=platform.python_version(), numpy=np.__version__, hnswlib=ver("hnswlib"),
                    qdrant_client=ver("qdrant-client"), qdrant_skipped=qdrant_skip, index=index_kwargs,
                    machine=platform.machine(), real_frames=int(real.shape[0]),
                    real_median_consecutive_cos=consecutive_cosine(real))
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
