"""1:N search over a million face-like templates: exact, in-process IVF and HNSW, Milvus Lite.

Each backend runs in a fresh process on the same synthetic gallery (same seed), so build
time and memory are its own. Subjects hold 1-3 templates, noisy views of a centre; the
centres share a mean direction, so strangers score ~0.45 instead of ~0, as in real face
embedding spaces. Queries are noisy copies of stored templates. Recall@1 is the share
of queries whose top subject is the exact search's top subject.

    .venv/bin/python benchmarks/identify_1m.py                    # 1,000,000 templates
    .venv/bin/python benchmarks/identify_1m.py --n 100000 --backends exact,milvus
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from auth_service.index import IndexConfig, build_index
from auth_service.shortlist import default_nprobe, ivf_lists
from auth_service.store import Gallery

# Centres are 0.7 shared direction + 0.7 own (as in identify_index.py): strangers score
# ~0.45 +- 0.05, the best of a million strangers ~0.7; a query's own subject ~0.9.
NOISE = 0.03  # per-dimension noise of a template around its centre, and of a query
THRESHOLD = 0.75
WRITES = 20  # enroll + revoke pairs timed after the searches


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_data(n: int, queries: int, seed: int) -> tuple[Gallery, np.ndarray, list[str]]:
    """Return the gallery, the query probes and each query's own subject."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 4, size=n)
    cum = np.cumsum(counts)
    s = int(np.searchsorted(cum, n)) + 1
    counts = counts[:s]
    counts[-1] -= int(cum[s - 1]) - n
    owner = np.repeat(np.arange(s), counts)
    mean = unit(rng.standard_normal(128, dtype=np.float32))
    vectors = np.empty((n, 128), np.float32)
    first = np.concatenate([[0], np.cumsum(counts)])
    chunk = 65_536  # subjects at a time: a million templates never exist twice in memory
    for lo in range(0, s, chunk):
        hi = min(s, lo + chunk)
        centres = unit(0.7 * mean + 0.7 * unit(rng.standard_normal((hi - lo, 128), np.float32)))
        rows = slice(first[lo], first[hi])
        noise = NOISE * rng.standard_normal((first[hi] - first[lo], 128), np.float32)
        vectors[rows] = unit(centres[owner[rows] - lo] + noise)
    names = [f"subject-{j}" for j in range(s)]
    subjects = [names[j] for j in owner]
    picks = rng.choice(n, queries, replace=False)
    probes = unit(vectors[picks] + NOISE * rng.standard_normal((queries, 128), np.float32))
    return Gallery(subjects, vectors), probes, [subjects[i] for i in picks]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def progress(items, label: str):
    from tqdm import tqdm

    return tqdm(items, desc=label, leave=False, disable=not sys.stderr.isatty())


def _drain_lite(uri: str, index) -> None:
    """Wait for Milvus Lite's background index builds, which its describe_index hides."""
    from milvus_lite.server_manager import server_manager_instance

    _, db, _ = server_manager_instance._servers[os.path.abspath(uri)]
    db.get_collection(index.collection)._wait_for_bg()


def run(backend: str, args: argparse.Namespace) -> dict:
    """Build one backend's index in this (fresh) process, then time searches and writes."""
    gallery, probes, truth = make_data(args.n, args.queries, args.seed)
    config = {
        "exact": IndexConfig(ann_min_templates=2**62),  # never a graph, whatever is added
        "ivf": IndexConfig(ann_min_templates=1, nprobe=args.nprobe, shortlist=args.shortlist),
        "hnsw": IndexConfig(
            ann_min_templates=1, ann="hnsw", ef_search=args.ef, shortlist=args.shortlist
        ),
        "milvus": IndexConfig(
            backend="milvus",
            milvus_uri=args.milvus_uri,
            milvus_ef=args.milvus_ef,
            shortlist=args.shortlist,
        ),
    }[backend]
    if backend == "milvus":
        import faiss
        import milvus_lite  # noqa: F401  (imports are not the index's memory)
        import pymilvus  # noqa: F401

        if args.faiss_threads:
            faiss.omp_set_num_threads(args.faiss_threads)
    elif backend == "ivf":
        import faiss
    elif backend == "hnsw":
        import usearch.index  # noqa: F401
    before = rss_mb()
    t0 = time.perf_counter()
    index = build_index(gallery, config, f"bench/{args.n}/{args.seed}")
    insert_s = time.perf_counter() - t0
    if backend == "milvus" and "://" not in args.milvus_uri:
        _drain_lite(args.milvus_uri, index)
    build_s = time.perf_counter() - t0
    memory = rss_mb() - before
    count = args.milvus_queries if backend == "milvus" else args.queries
    latency, top = [], []
    for p in progress(probes[:count], backend):
        t = time.perf_counter()
        found = index.search(p, THRESHOLD, 1)
        latency.append(time.perf_counter() - t)
        top.append(found[0][1] if found else None)
    writes = []
    for i in progress(range(WRITES), f"{backend} writes"):
        t = time.perf_counter()
        index.add(f"new-{i}", gallery.vectors[i : i + 2])
        index.remove(f"new-{i}")
        writes.append(time.perf_counter() - t)
    return {
        "insert_s": insert_s,
        "build_s": build_s,
        "latency_ms": 1e3 * np.asarray(latency),
        "write_ms": 1e3 * np.median(writes),
        "memory_mb": memory,
        "top": top,
        "truth": truth,
    }


def table(args: argparse.Namespace, results: dict[str, dict], truth: list[str]) -> str:
    names = {
        "exact": "exact numpy (TemplateIndex, no graph)",
        "ivf": f"IVF in process (FAISS SQ8, {ivf_lists(args.n)} lists, nprobe "
        f"{args.nprobe or default_nprobe(ivf_lists(args.n))}, shortlist {args.shortlist})",
        "hnsw": f"HNSW in process (usearch f16, ef {args.ef}, shortlist {args.shortlist})",
        "milvus": f"Milvus Lite HNSW (FAISS M 16, ef {max(args.milvus_ef, args.shortlist)}, "
        f"shortlist {args.shortlist})",
    }
    exact = results.get("exact", {}).get("top")
    lines = [
        "| backend | build s (insert + index) | search p50 ms | p99 ms | recall@1 vs exact "
        "| enroll+revoke ms | RSS MB per 1M | queries |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lat = r["latency_ms"]
        recall = "-"
        if exact is not None:
            agree = [a == b for a, b in zip(r["top"], exact, strict=False)]
            recall = f"{np.mean(agree):.3f}"
        lines.append(
            f"| {names[name]} | {r['build_s']:.1f} ({r['insert_s']:.1f} + "
            f"{r['build_s'] - r['insert_s']:.1f}) | {np.percentile(lat, 50):.2f} | "
            f"{np.percentile(lat, 99):.2f} | {recall} | {r['write_ms']:.1f} | "
            f"{r['memory_mb'] * 1e6 / args.n:.0f} | {len(lat)} |"
        )
    if exact is not None:
        own = np.mean([a == b for a, b in zip(exact, truth, strict=False)])
        lines.append(f"\nExact search finds the query's own subject first in {own:.1%} of queries.")
    return "\n".join(lines)


def main() -> None:
    """Run the chosen backends one after another and print a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="templates in the gallery")
    ap.add_argument("--queries", type=int, default=1000, help="queries for exact, ivf and hnsw")
    ap.add_argument(
        "--milvus-queries",
        type=int,
        default=100,
        help="queries for milvus (Lite does Python work per stored row on every search)",
    )
    ap.add_argument("--backends", default="exact,ivf,hnsw,milvus", help="comma-separated")
    ap.add_argument("--nprobe", type=int, default=None, help="IVF lists scanned (default: 1/32)")
    ap.add_argument("--ef", type=int, default=IndexConfig().ef_search, help="HNSW search breadth")
    ap.add_argument("--milvus-ef", type=int, default=IndexConfig().milvus_ef, help="Milvus's")
    ap.add_argument("--shortlist", type=int, default=IndexConfig().shortlist)
    ap.add_argument("--milvus-uri", help="default: a Milvus Lite file in a temporary folder")
    ap.add_argument("--faiss-threads", type=int, default=0, help="Lite's index builds (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.milvus_queries = min(args.milvus_queries, args.queries)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"exact", "ivf", "hnsw", "milvus"}
    if unknown:
        ap.error(f"unknown backends: {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory() as tmp:
        args.milvus_uri = args.milvus_uri or str(Path(tmp) / "identify_1m.db")
        results, failed = {}, {}
        for backend in backends:
            t0 = time.perf_counter()
            # A fresh process per backend: its memory and threads are its own.
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
                try:
                    results[backend] = pool.submit(run, backend, args).result()
                except Exception as exc:  # one backend failing must not lose the others
                    failed[backend] = f"{type(exc).__name__}: {exc}"
            print(f"{backend}: done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            if backend in results:  # a row now, in case a later backend runs for hours
                print(table(args, results, results[backend]["truth"]), file=sys.stderr)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{args.n:,} templates x 128, {datetime.date.today()}, {os.cpu_count()} CPUs")
    print(f"load average at the end (1, 5, 15 min): {load}\n")
    if results:
        print(table(args, results, next(iter(results.values()))["truth"]))
    for backend, why in failed.items():
        print(f"\n{backend} failed: {why}")


if __name__ == "__main__":
    main()
