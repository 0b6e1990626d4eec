#!/usr/bin/env python3
"""Soak: continuous insert + evict for a long run; RAM and latency must stay flat.

Feeds --inserts frames at --fps (message time) into the memory the node builds (the window plus, unless
--no-tier, the long-horizon keyframe tier), and after each insert does what the node does per frame: the
lookback ("the scene 2 s ago") and a k=3 neighbour query on the window. Every --sample inserts it records
the process RSS, both tiers' sizes and the insert / query percentiles of that segment; at the end it
prints them and the RSS growth after warm-up (the first sample once both tiers are full).

Data: the demo video's CPU-backend embeddings (cached under ~/.cache/vidaction_ros/), then a random walk on
the unit sphere with the real frames' median consecutive cosine, generated in chunks so the stream itself
needs no memory that grows with --inserts.

Usage: python bench/memory_soak.py [--inserts 1000000] [--window 300] [--ttl 30] [--json PATH]
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # stable numpy timings on a shared host

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

try:
    from vidaction_ros.memory import TemporalMemory
    from vidaction_ros.tools.memory_data import consecutive_cosine, sphere_walk, video_embeddings, rss_mb
    from vidaction_ros.memory import TieredMemory
except ImportError:  # running from a source checkout without an installed package
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from vidaction_ros.memory import TemporalMemory
    from vidaction_ros.tools.memory_data import consecutive_cosine, sphere_walk, video_embeddings, rss_mb
    from vidaction_ros.memory import TieredMemory


def stream(real: np.ndarray, total: int, seed: int, chunk: int = 1024):
    """Yield (index, vector): the real frames, then a matched walk continued chunk by chunk (small chunks:
    the generator's own buffers must not show up in the RSS being measured)."""
    rng = np.random.default_rng(seed)
    cos = min(0.999, consecutive_cosine(real, "median"))
    i = 0
    for v in real[:total]:
        yield i, v
        i += 1
    last = real[-1]
    while i < total:
        block = sphere_walk(rng, min(chunk, total - i), real.shape[1], cos=cos, start=last)
        for v in block:
            yield i, v
            i += 1
        last = block[-1]


def pct(xs, p):
    return float(np.percentile(np.asarray(xs) * 1e3, p)) if xs else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inserts", type=int, default=1_000_000, help="frames to insert")
    ap.add_argument("--window", type=int, default=300, help="window capacity (frames)")
    ap.add_argument("--ttl", type=float, default=30.0, help="window TTL (s, message time)")
    ap.add_argument("--fps", type=float, default=10.0, help="frame rate of the message-time stamps")
    ap.add_argument("--no-tier", action="store_true", help="window only, no long-horizon keyframe tier")
    ap.add_argument("--long-capacity", type=int, default=1000)
    ap.add_argument("--long-ttl", type=float, default=600.0)
    ap.add_argument("--storage", default="float32", help="float32 | float16 | int8")
    ap.add_argument("--sample", type=int, default=50_000, help="inserts per reported segment")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="PATH", help="write samples and summary as JSON here")
    args = ap.parse_args(argv)
    if args.inserts < 1 or args.sample < 1:
        ap.error("--inserts and --sample must be positive")

    real, _ = video_embeddings()
    dim = real.shape[1]
    if args.no_tier:
        mem = TemporalMemory(dim, capacity=args.window, ttl_s=args.ttl, storage=args.storage)
        window = mem
    else:
        mem = TieredMemory(dim, capacity=args.window, ttl_s=args.ttl, long_capacity=args.long_capacity,
                           long_ttl_s=args.long_ttl, storage=args.storage)
        window = mem.recent
    gc.collect()
    rss_start = rss_mb()
    samples = []
    ins, qry = [], []
    t_start = time.perf_counter()
    for i, v in stream(real, args.inserts, args.seed):
        stamp = i / args.fps
        t0 = time.perf_counter()
        mem.insert(i, stamp, v)
        t1 = time.perf_counter()
        mem.lookback(v, 2.0)  # the node's per-frame context: the scene 2 s ago...
        window.knn(v, k=3, exclude_sequence=i)  # ...and the nearest older frames in the window
        t2 = time.perf_counter()
        ins.append(t1 - t0)
        qry.append(t2 - t1)
        if (i + 1) % args.sample == 0 or i + 1 == args.inserts:
            st = mem.stats()
            samples.append(dict(inserts=i + 1, rss_mb=rss_mb(), window=st["size"], long=st.get("long_size", 0),
                                insert_p50_ms=pct(ins, 50), insert_p99_ms=pct(ins, 99),
                                query_p50_ms=pct(qry, 50), query_p99_ms=pct(qry, 99),
                                elapsed_s=time.perf_counter() - t_start))
            ins, qry = [], []
            s = samples[-1]
            print(f"  {s['inserts']:>9} inserts  rss {s['rss_mb']:7.1f} MB  "
                  f"window {s['window']:>6}  long {s['long']:>5}  "
                  f"ins p50/p99 {s['insert_p50_ms']:.3f}/{s['insert_p99_ms']:.3f} ms  "
                  f"ctx p50/p99 {s['query_p50_ms']:.3f}/{s['query_p99_ms']:.3f} ms  {s['elapsed_s']:.0f} s",
                  file=sys.stderr, flush=True)

    st = mem.stats()
    # Warm-up: both tiers full (the long tier fills after long_ttl of message time), allocator settled.
    full_at = max(args.window, int(np.ceil((0 if args.no_tier else args.long_ttl) * args.fps)))
    warm = [s for s in samples if s["inserts"] >= full_at] or samples[-1:]
    rss = [s["rss_mb"] for s in warm]
    summary = dict(inserts=args.inserts, window=args.window, ttl_s=args.ttl, tier=not args.no_tier,
                   storage=args.storage, rss_start_mb=rss_start, rss_warm_mb=rss[0], rss_final_mb=rss[-1],
                   rss_min_mb=min(rss), rss_max_mb=max(rss), rss_growth_after_warmup_mb=rss[-1] - rss[0],
                   evicted_ttl=st["evicted_ttl"], evicted_capacity=st["evicted_capacity"],
                   keyframes=st.get("keyframes", 0), long_evicted=st.get("long_evicted_ttl", 0)
                   + st.get("long_evicted_capacity", 0), wall_s=time.perf_counter() - t_start)

    print(f"memory soak: {args.inserts} inserts at {args.fps:g} fps message time "
          f"({args.inserts / args.fps / 3600:.1f} h), window {args.window} / {args.ttl:g} s, "
          + ("no long tier" if args.no_tier else f"long tier {args.long_capacity} / {args.long_ttl:g} s")
          + f", storage {args.storage}, {os.cpu_count()} CPUs; per insert also the node's context queries")
    hdr = (f"{'inserts':>9} {'rss MB':>8} {'window':>7} {'long':>6} {'ins p50':>8} {'ins p99':>8} "
           f"{'ctx p50':>8} {'ctx p99':>8}")
    print("times in ms (ctx = lookback 2 s + window k=3 per frame)")
    print(hdr)
    print("-" * len(hdr))
    for s in samples:
        print(f"{s['inserts']:>9} {s['rss_mb']:>8.1f} {s['window']:>7} {s['long']:>6} {s['insert_p50_ms']:>8.3f} "
              f"{s['insert_p99_ms']:>8.3f} {s['query_p50_ms']:>8.3f} {s['query_p99_ms']:>8.3f}")
    print(f"RSS: start {summary['rss_start_mb']:.1f} MB, after warm-up ({warm[0]['inserts']} inserts) "
          f"{summary['rss_warm_mb']:.1f} MB, final {summary['rss_final_mb']:.1f} MB, range after warm-up "
          f"{summary['rss_min_mb']:.1f}..{summary['rss_max_mb']:.1f} MB, "
          f"growth {summary['rss_growth_after_warmup_mb']:+.1f} MB; "
          f"evicted {summary['evicted_ttl'] + summary['evicted_capacity']} from the window, "
          f"{summary['long_evicted']} of {summary['keyframes']} keyframes; {summary['wall_s']:.0f} s")
    if args.json:
        meta = dict(cpus=os.cpu_count(), python=platform.python_version(), numpy=np.__version__,
                    machine=platform.machine(), fps=args.fps, sample=args.sample)
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "summary": summary, "samples": samples}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
