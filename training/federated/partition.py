"""``kfaar fl partition``: split LFW into identity-disjoint "organizations".

Each site gets a folder of symlinks ``<site>/<identity>/<image>`` (an LFW-style folder a
SuperNode reads through ``--node-config data-path=...``) and ``partition.json`` lists
every site's identities. The dev triplets' identities are held out of every site: the
server's dev metrics judge people no site trained on.

- ``iid``: identities are shuffled and dealt round-robin, so sites look alike.
- ``noniid``: identities are sorted by how many photos they have and cut into contiguous
  runs of Dirichlet-drawn sizes: sites differ in size and in whether their people have
  many photos (easy positives) or few, the quantity and label skew of real organizations.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from training.chips import list_images
from training.datasets import identity_of, read_triplets

log = logging.getLogger(__name__)

SCHEMES = ("iid", "noniid")
PARTITION_FILE = "partition.json"


@dataclass
class PartitionConfig:
    sites: int = 3
    scheme: str = "iid"
    seed: int = 2025
    max_identities: int | None = None  # total, for small runs: people with >= 2 photos first
    max_images: int | None = None  # per identity, for small runs
    alpha: float = 1.0  # noniid: Dirichlet concentration of the site sizes (smaller = skewed)


def dev_identities(dev_triplets: Path) -> set[str]:
    """Return the identities that appear anywhere in the dev triplets."""
    triplets, _ = read_triplets(dev_triplets)
    return {identity_of(p) for t in triplets for p in (t.x1, t.x2, t.y)}


def assign(by_id: dict[str, list[str]], cfg: PartitionConfig) -> list[list[str]]:
    """Return each site's identities (disjoint, every site non-empty)."""
    if cfg.scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {cfg.scheme!r}")
    rng = np.random.default_rng(cfg.seed)
    ids = sorted(by_id)
    if cfg.max_identities is not None:
        # Small runs need people with two photos: triplets are drawn from them.
        multi = [i for i in ids if len(by_id[i]) >= 2]
        single = [i for i in ids if len(by_id[i]) < 2]
        ids = [*rng.permutation(multi).tolist(), *rng.permutation(single).tolist()]
        ids = sorted(ids[: cfg.max_identities])
    if len(ids) < cfg.sites:
        raise ValueError(f"{len(ids)} identities cannot fill {cfg.sites} sites")
    if cfg.scheme == "iid":
        order = rng.permutation(len(ids))
        return [sorted(ids[j] for j in order[s :: cfg.sites]) for s in range(cfg.sites)]
    ranked = sorted(ids, key=lambda i: (-len(by_id[i]), i))
    share = rng.dirichlet(np.full(cfg.sites, cfg.alpha))
    # Every site gets at least two identities (one cannot form a triplet's negative).
    counts = 2 + np.floor(share * (len(ranked) - 2 * cfg.sites)).astype(int)
    counts[-1] = len(ranked) - counts[:-1].sum()
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [sorted(ranked[bounds[s] : bounds[s + 1]]) for s in range(cfg.sites)]


def partition(lfw: Path, dev_triplets: Path, out: Path, cfg: PartitionConfig) -> dict:
    """Write ``out/site-<i>/`` symlink folders and ``out/partition.json``; return the latter."""
    if cfg.sites < 1:
        raise ValueError("--sites must be at least 1")
    held_out = dev_identities(dev_triplets)
    by_id: dict[str, list[str]] = {}
    for rel in list_images(lfw, held_out):
        by_id.setdefault(identity_of(rel), []).append(rel)
    if cfg.max_images is not None:
        by_id = {k: v[: cfg.max_images] for k, v in by_id.items()}
    sites = assign(by_id, cfg)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"config": asdict(cfg), "source": str(lfw.resolve()), "held_out": len(held_out)}
    doc["sites"] = []
    for s, ids in enumerate(sites):
        folder = out / f"site-{s}"
        if folder.exists():
            shutil.rmtree(folder)  # a stale partition must not leak identities across sites
        for ident in ids:
            (folder / ident).mkdir(parents=True)
            for rel in by_id[ident]:
                (folder / rel).symlink_to((lfw / rel).resolve())
        images = sum(len(by_id[i]) for i in ids)
        doc["sites"].append({"path": str(folder), "identities": ids, "images": images})
        log.info("site %d: %d identities, %d images", s, len(ids), images)
    (out / PARTITION_FILE).write_text(json.dumps(doc, indent=1))
    return doc
