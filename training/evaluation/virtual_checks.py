"""Realism and "no real person inside" checks on an evaluation run's faces."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge_agent.progress import progress
from training.datasets import identity_of, read_triplets
from training.evaluation import forensics, metrics, realism
from training.evaluation.gallery import TrainingGallery, gallery_identities
from training.evaluation.judges import Judge

log = logging.getLogger(__name__)


def paired_samples(run) -> tuple[list, list, np.ndarray]:
    """Return originals, one virtual face of each (its first key), and their identities."""
    first: dict[str, object] = {}
    for (rel, _), sample in run.virtuals.items():
        first.setdefault(rel, sample)
    rels = [r for r in run.originals if r in first]
    groups = np.array([identity_of(r) for r in rels])
    return [run.originals[r] for r in rels], [first[r] for r in rels], groups


def realism_metrics(run, forensics_folder: Path | None = None) -> dict:
    """Return the real-versus-virtual classifier's AUC and the MesoNet scores."""
    originals, virtuals, groups = paired_samples(run)
    samples = originals + virtuals
    features = np.stack(
        [
            realism.chip_features(s.image, s.ref.face.landmarks)
            for s in progress(samples, desc="realism features")
        ]
    )
    embeddings = np.stack([s.system for s in samples])
    labels = np.r_[np.zeros(len(originals)), np.ones(len(virtuals))]
    out = {
        "realism_n": len(originals),
        **realism.realism_auc(features, embeddings, labels, np.r_[groups, groups]),
    }
    try:
        nets = forensics.MesoNets(forensics_folder)
    except FileNotFoundError as exc:
        log.warning("MesoNet scores skipped: %s", exc)
        out["mesonet"] = None
        out["mesonet_note"] = f"skipped: {exc}"
        return out
    out["mesonet"] = {
        name: forensics.summarize(
            nets.fake_scores([forensics.meso_crop(s.image, s.ref.face.landmarks) for s in group])
        )
        for name, group in (("original", originals), ("virtual", virtuals))
    }
    return out


def real_person_metrics(
    run,
    judges: list[Judge],
    gallery_root: Path,
    triplets: Path,
    size: int,
    cache: Path | None = None,
) -> dict:
    """Return, per judge, how often a face's nearest training identity is the same person.

    The gallery excludes every identity named in ``triplets`` (all of its lines, not only
    those evaluated), so that the people evaluated are not in it.
    """
    triplet_list, _ = read_triplets(triplets)
    used = {identity_of(p) for t in triplet_list for p in (t.x1, t.x2, t.y)}
    gallery = TrainingGallery(gallery_identities(gallery_root, used, size), cache)
    results = {}
    for judge in judges:
        if judge.same_person_threshold is None:
            log.warning("no fixed same-person rule for judge %s: skipped", judge.name)
            continue
        virt = np.stack([s.judged[judge.name] for s in run.virtuals.values() if s.judged])
        orig = np.stack([s.judged[judge.name] for s in run.originals.values()])
        share_virtual, best_virtual = gallery.match_share(judge, virt)
        share_original, best_original = gallery.match_share(judge, orig)
        # A fixed 1:1 rule false-matches often against thousands of identities, so also
        # compare with unseen real people: are virtual faces closer to a training identity?
        p99 = np.percentile(best_original, 99)
        results[judge.name] = {
            "threshold": judge.same_person_threshold,
            "virtual": share_virtual,
            "original": share_original,
            "n_virtual": len(virt),
            "nearest_auc": metrics.auc(best_virtual, best_original),
            "virtual_above_original_p99": float((best_virtual > p99).mean()),
        }
    return {"real_person_match": results, "gallery_identities": len(gallery.names)}
