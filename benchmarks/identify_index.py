"""1:N search: exact matrix product against the IVF and HNSW shortlists with exact re-scoring.

Galleries are synthetic but shaped like face embeddings: every vector shares a common
direction (random people score about 0.5, as in dlib's space), each subject has two
templates, and probes are fresh noisy views of enrolled subjects. Exact search, measured
in the same run on the same gallery, is the baseline: the table gives latency, the speed-up
and how often each shortlist returns exact search's top subject.

    python benchmarks/identify_index.py [--sizes 100000 300000] [--queries 500]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from auth_service.index import IndexConfig, TemplateIndex
from auth_service.store import Gallery

PER_SUBJECT = 2
THRESHOLD = 0.9


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def faces(rng: np.random.Generator, subjects: int) -> tuple[np.ndarray, np.ndarray]:
    """Return subject identities (S, 128) and templates (S * 2, 128)."""
    common = unit(rng.standard_normal(128))
    ids = unit(0.7 * common + 0.7 * unit(rng.standard_normal((subjects, 128))))
    noise = 0.25 / np.sqrt(128) * rng.standard_normal((subjects, PER_SUBJECT, 128))
    return ids, unit(ids[:, None] + noise).reshape(-1, 128)


def timed(fn, queries: np.ndarray) -> tuple[list, np.ndarray]:
    out, ms = [], []
    for q in queries:
        t0 = time.perf_counter()
        out.append(fn(q))
        ms.append((time.perf_counter() - t0) * 1e3)
    return out, np.array(ms)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000])
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--ef", type=int, nargs="+", default=[128, 512], help="HNSW ef_search")
    p.add_argument(
        "--nprobe", type=int, nargs="+", default=[0], help="IVF lists scanned (0: the default)"
    )
    p.add_argument("--engines", nargs="+", choices=("ivf", "hnsw"), default=["ivf", "hnsw"])
    args = p.parse_args()
    rng = np.random.default_rng(0)
    w = sys.stdout.write
    w(
        "| templates | search | build s | p50 ms | p99 ms | speed-up (p50) "
        "| top-1 = exact | add 1 subject ms | revoke 1 subject ms |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    for size in args.sizes:
        ids, templates = faces(rng, size // PER_SUBJECT)
        names = [f"s{i}" for i in range(len(ids)) for _ in range(PER_SUBJECT)]
        gallery = Gallery(names, templates)
        pick = rng.choice(len(ids), args.queries, replace=False)
        probes = unit(ids[pick] + 0.25 / np.sqrt(128) * rng.standard_normal((len(pick), 128)))
        exact = TemplateIndex.from_gallery(gallery, IndexConfig(ann_min_templates=10 * size))
        rows = [("exact", exact, 0.0)]
        for nprobe in args.nprobe if "ivf" in args.engines else []:
            config = IndexConfig(ann_min_templates=1, nprobe=nprobe or None)
            t0 = time.perf_counter()
            ivf = TemplateIndex.from_gallery(gallery, config)
            rows.append((f"ivf nprobe {nprobe or 'default'}", ivf, time.perf_counter() - t0))
        if "hnsw" in args.engines:
            t0 = time.perf_counter()
            config = IndexConfig(ann_min_templates=1, ann="hnsw")
            graph = TemplateIndex.from_gallery(gallery, config)
            rows += [(f"hnsw ef {ef}", graph, time.perf_counter() - t0) for ef in args.ef]
        results = []
        for label, index, built in rows:
            if label.startswith("hnsw"):
                index.set_ef_search(int(label.split()[-1]))
            found, ms = timed(lambda q, ix=index: ix.search(q, THRESHOLD, 5), probes)
            results.append((label, built, ms, [f[0][1] if f else None for f in found]))
        writes = {}
        for label, index, _ in rows:  # one write of each kind, on its first index
            kind = label.split()[0]
            if kind in writes:
                continue
            t0 = time.perf_counter()
            index.add("new-subject", templates[:PER_SUBJECT])
            t1 = time.perf_counter()
            index.remove("s1")
            writes[kind] = ((t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3)
        base_ms, base_top = np.median(results[0][2]), results[0][3]
        for label, built, ms, top in results:
            agree = np.mean([a == b for a, b in zip(top, base_top, strict=True)])
            add_ms, remove_ms = writes[label.split()[0]]
            w(
                f"| {size:,} | {label} | {built:.1f} | {np.median(ms):.2f} | "
                f"{np.percentile(ms, 99):.2f} | {base_ms / np.median(ms):.1f}x | {agree:.3f} | "
                f"{add_ms:.2f} | {remove_ms:.2f} |\n"
            )
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
