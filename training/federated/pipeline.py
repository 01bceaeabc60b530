"""From partition to a new model version: what ``kfaar fl local`` runs, in order."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from training.chips import ChipSet, build_chip_set
from training.federated.local import LocalConfig, run_federation
from training.federated.partition import PartitionConfig, partition

log = logging.getLogger(__name__)

PLOTTED = ("anonymity", "diversity", "target_cos", "kvfa_cos", "kvfa_wrong_cos")


def _global_cache(name: str) -> ChipSet | None:
    from edge_agent.assets import cache_dir

    path = cache_dir() / "chips" / f"{name}_chips.npz"
    return ChipSet.load(path) if path.is_file() else None


def dev_chip_set(lfw: Path, dev_triplets: Path, faces: int, out: Path) -> Path:
    """Write the first ``faces`` dev-triplet faces (pairs kept together) as a chip set."""
    from training.datasets import read_triplets

    triplets, _ = read_triplets(dev_triplets)
    rels: list[str] = []
    for t in triplets:  # x1 and x2 together: the synchronism metric needs same-person pairs
        rels += [r for r in (t.x1, t.x2) if r not in rels]
        if len(rels) >= faces:
            break
    cached = _global_cache("dev")
    if cached is not None and set(rels) <= set(cached.paths.tolist()):
        where = {p: i for i, p in enumerate(cached.paths.tolist())}
        chips = cached.subset(np.array([where[r] for r in rels]))
    else:
        chips = build_chip_set(lfw, rels)
    chips.save(out)
    return out


def prime_site_chips(site_paths: list[Path]) -> None:
    """Seed each site's chip cache from kfaar train's cache when it has every image."""
    from training.chips import list_images
    from training.federated.task import site_chips

    cached = _global_cache("train")
    if cached is None:
        return  # each site builds its own chips on its first round
    where = {p: i for i, p in enumerate(cached.paths.tolist())}
    for site in site_paths:
        rels = [r for r in list_images(site) if r in where]
        if rels:
            chips = cached.subset(np.array([where[r] for r in rels]))
            site_chips(site, prebuilt=chips)


def merge(sets: list[ChipSet]) -> ChipSet:
    """Concatenate identity-disjoint chip sets, relabelling identities."""
    names = np.concatenate([s.names for s in sets])
    offsets = np.cumsum([0] + [len(s.names) for s in sets[:-1]])
    labels = np.concatenate([s.labels + o for s, o in zip(sets, offsets, strict=True)])
    return ChipSet(
        np.concatenate([s.paths for s in sets]),
        labels.astype(np.int32),
        names,
        np.concatenate([s.chips for s in sets]),
        np.concatenate([s.z for s in sets]),
    )


def next_version(base: str) -> str:
    """Return ``base`` with the minor number bumped: 1.0.0 -> 1.1.0."""
    parts = base.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"cannot bump version {base!r}; pass --version")
    return f"{parts[0]}.{int(parts[1]) + 1}.0"


def plot_metrics(metrics: dict, path: Path) -> Path:
    """Plot the dev metrics against the round (round 0 is the shipped model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = metrics["rounds"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in PLOTTED:
        ax.plot([r["round"] for r in rows], [r.get(key, np.nan) for r in rows], "o-", label=key)
    if metrics.get("best_round") is not None:
        ax.axvline(metrics["best_round"], color="grey", ls=":", label="best round")
    ax.set(xlabel="round", ylabel="dev metric", title="Federated fine-tuning: dev metrics")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def fl_local(cfg: LocalConfig) -> dict:
    """Partition, federate on loopback, export the best round; return the summary."""
    from training.datasets import data_root
    from training.federated.task import default_bundle, load_models, site_chips
    from training.hpvfg.export import export_bundle

    root = cfg.data_root or data_root()
    lfw, dev_triplets = root / "lfw", root / "splits" / "lfw_dev_triplets.txt"
    if not lfw.is_dir() or not dev_triplets.is_file():
        raise FileNotFoundError(f"need {lfw}/ and {dev_triplets} (--data-root, $KFAAR_DATA_ROOT)")
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    pcfg = PartitionConfig(
        sites=cfg.sites,
        scheme=cfg.scheme,
        seed=cfg.seed,
        max_identities=cfg.max_identities,
        max_images=cfg.max_images,
    )
    doc = partition(lfw, dev_triplets, out / "sites", pcfg)
    sites = [Path(s["path"]) for s in doc["sites"]]
    prime_site_chips(sites)
    run_config = {
        "num-server-rounds": cfg.rounds,
        "dev-faces": cfg.dev_faces,
        "dev-chips": str(dev_chip_set(lfw, dev_triplets, cfg.dev_faces, out / "dev_chips.npz")),
    } | cfg.run_config
    server = run_federation(out, sites, run_config, cfg.timeout_s, tls=cfg.tls)
    metrics = json.loads((server / "metrics.json").read_text())
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    summary = {"metrics": str(out / "metrics.json"), "best_round": metrics["best_round"]}
    summary["plot"] = str(plot_metrics(metrics, out / "dev_metrics.png"))
    if cfg.export:
        bundle = Path(str(run_config.get("start-bundle", "")) or default_bundle())
        version = cfg.version or next_version(load_models(bundle).manifest["version"])
        # The server's calibration faces: in this one-machine federation, the sites' own.
        calib = merge([site_chips(s) for s in sites])
        export_bundle(server / "best.pt", out / "model", calib, version, cfg.calib_faces)
        summary |= {"model": str(out / "model"), "version": version}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
