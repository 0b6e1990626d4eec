#!/usr/bin/env python3
"""Compact storage of the kept vectors (float16 / int8): memory saved and recall cost, measured.

TemporalMemory keeps its own copy of every vector beside hnswlib's graph (exact time-slice scans,
reported similarities, time lookups, vector_of). That copy can be float32, float16 or int8 (one float32
scale per vector). hnswlib itself always stores float32 (its Python binding has no half or 8-bit space),
so compact storage shrinks our copy only; this bench says by how much of the total, and what it costs.

Per window size and storage, on the same data (demo-video embeddings + matched random walk, as
bench/memory.py) and the same queries:
  bytes/vec        the ring's copy (exact, from the array sizes)
  hnsw bytes/vec   hnswlib's float32 element (level-0 links + vector + label; from its layout)
  heap/vec         measured C-heap bytes in use per stored vector (graph + ring + bookkeeping; glibc
                   mallinfo2, which unlike RSS is not fooled by reused freed pages); rss_per_vec in JSON
  exact rec@10     recall@10 of the exact time-slice scan (which ranks on the stored copy) against
                   float64 brute force on the original vectors
  hnsw rec@10      the same for an unrestricted query (HNSW + coarse candidates, ranked on the copy)
  sim err          mean / max |reported similarity - true similarity|
  scan p50/p99     exact scan query time (numpy has no half/int8 GEMV: compact copies are widened)

Usage: python bench/memory_storage.py [--windows 300,3000,30000] [--json PATH]
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

try:
    from vidaction_ros.memory import STORAGE_CHOICES, TemporalMemory
    from vidaction_ros.tools.memory_data import extend_with_walk, video_embeddings, rss_mb
except ImportError:  # running from a source checkout without an installed package
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from vidaction_ros.memory import STORAGE_CHOICES, TemporalMemory
    from vidaction_ros.tools.memory_data import extend_with_walk, video_embeddings, rss_mb

K = 10
M = inspect.signature(TemporalMemory).parameters['M'].default  # TemporalMemory's default graph degree


def heap_bytes() -> int | None:
    """Bytes the C heap has handed out (glibc mallinfo2: arena + mmapped blocks), or None off glibc.

    Unlike RSS this counts memory in use, not pages resident: a freed-and-reused block neither hides
    nor inflates a measurement. numpy and hnswlib both allocate through malloc."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")]

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
    except (OSError, AttributeError):
        return None
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def hnsw_element_bytes(dim: int, m: int = M) -> int:
    """hnswlib's level-0 element: 2M neighbour ids + a count (4 B each), the float32 vector, the 8-byte label."""
    return (2 * m * 4 + 4) + dim * 4 + 8


def pct(xs, p):
    return float(np.percentile(np.asarray(xs) * 1e3, p)) if xs else float("nan")


def in_child(fn, *args):
    """Run fn(*args) in a forked child and return its result: each measurement starts from the same
    heap, so the RSS growth is that run's own (freed memory of an earlier run would be reused and hide it)."""
    import multiprocessing as mp

    with mp.get_context("fork").Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(fn, args)


def bench(window: int, storage: str, data: np.ndarray, queries: np.ndarray, truth: list) -> dict:
    n, dim = data.shape
    gc.collect()
    rss0, heap0 = rss_mb(), heap_bytes()
    mem = TemporalMemory(dim, capacity=window, ttl_s=1e9, storage=storage, exact_threshold=10**9)
    for i in range(n):
        mem.insert(i, i * 0.1, data[i])
    gc.collect()
    rss1, heap1 = rss_mb(), heap_bytes()
    win = data[n - window:].astype(np.float64)
    rec_exact, rec_hnsw, errs, lat = [], [], [], []
    for qi, q in enumerate(queries):
        t0 = time.perf_counter()
        hits = mem.knn(q, k=K, max_age_s=1e9)  # restricted -> the exact scan of the whole window
        lat.append(time.perf_counter() - t0)
        rec_exact.append(len({h.sequence for h in hits} & truth[qi]) / K)
        for h in hits:
            errs.append(abs(h.similarity - float(win[h.sequence - (n - window)] @ q)))
        hits = mem.knn(q, k=K)
        rec_hnsw.append(len({h.sequence for h in hits} & truth[qi]) / K)
    out = dict(window=window, storage=storage, vector_bytes_per_vec=mem.vector_bytes / window,
               hnsw_bytes_per_vec=hnsw_element_bytes(dim), rss_per_vec=(rss1 - rss0) * 2**20 / window,
               heap_per_vec=(heap1 - heap0) / window if heap0 is not None else float("nan"),
               rss_delta_mb=rss1 - rss0, exact_recall_at_10=float(np.mean(rec_exact)),
               hnsw_recall_at_10=float(np.mean(rec_hnsw)), sim_err_mean=float(np.mean(errs)),
               sim_err_max=float(np.max(errs)), scan_p50_ms=pct(lat, 50), scan_p99_ms=pct(lat, 99))
    del mem
    gc.collect()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", default="300,3000,30000")
    ap.add_argument("--steady", type=int, default=2000, help="inserts past the window (each evicts)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    real, _ = video_embeddings()
    dim = real.shape[1]
    results = []
    for window in [int(w) for w in args.windows.split(",") if w.strip()]:
        rng = np.random.default_rng(args.seed)
        n = window + args.steady
        data = extend_with_walk(real, n, rng)
        win = data[n - window:].astype(np.float64)
        qs = []
        for c in range(args.queries):
            if c % 2 == 0:
                qs.append(data[n - 1 - int(rng.integers(0, 10))])  # "now"
            else:  # a revisited place: a window frame plus noise of norm 0.2
                q = data[n - window + int(rng.integers(0, window))] + 0.2 * rng.standard_normal(dim) / math.sqrt(dim)
                qs.append(q / np.linalg.norm(q))
        queries = np.asarray(qs, dtype=np.float32)
        truth = [set((np.argsort(-(win @ q.astype(np.float64)))[:K] + n - window).tolist()) for q in queries]
        for storage in STORAGE_CHOICES:
            print(f"window {window}, {storage}...", file=sys.stderr, flush=True)
            results.append(in_child(bench, window, storage, data, queries, truth))

    print(f"compact vector storage: dim {dim}, demo-video embeddings + matched random walk, {args.queries} queries "
          f"per window; recall against float64 brute force on the original vectors; {os.cpu_count()} CPUs")
    print("hnswlib keeps its own float32 copy of every vector regardless of `storage` "
          f"({hnsw_element_bytes(dim)} B per element at level 0 with M={M}, {dim * 4} B of it the vector)")
    hdr = (f"{'window':>7} {'storage':<8} {'B/vec':>6} {'hnsw B':>6} {'heap B/vec':>10} {'saved':>6} "
           f"{'exact r@10':>10} {'hnsw r@10':>9} {'err mean':>9} {'err max':>9} {'scan p50':>8} {'scan p99':>8}")
    print(hdr)
    print("-" * len(hdr))
    base = {r["window"]: r for r in results if r["storage"] == "float32"}
    for r in results:
        saved = 1.0 - r["heap_per_vec"] / base[r["window"]]["heap_per_vec"]
        r["saved_fraction_of_vectors_and_graph"] = saved
        print(f"{r['window']:>7} {r['storage']:<8} {r['vector_bytes_per_vec']:>6.0f} {r['hnsw_bytes_per_vec']:>6} "
              f"{r['heap_per_vec']:>10.0f} {saved:>6.1%} "
              f"{r['exact_recall_at_10']:>10.3f} {r['hnsw_recall_at_10']:>9.3f} "
              f"{r['sim_err_mean']:>9.2e} {r['sim_err_max']:>9.2e} {r['scan_p50_ms']:>8.3f} {r['scan_p99_ms']:>8.3f}")
    print("saved = measured heap bytes per vector saved against float32 (graph included); times in ms")
    if args.json:
        meta = dict(dim=dim, k=K, M=M, cpus=os.cpu_count(), python=platform.python_version(),
                    numpy=np.__version__, machine=platform.machine())
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
