"""``kfaar calibrate``: operating points per embedding space, written into a bundle manifest.

For each space the service decides in, the threshold is the lowest cosine at which at most
a fraction FAR of impostor pairs is accepted, on *training* identities (LFW minus the
identities of ``lfw_dev_triplets.txt``), so the dev identities stay clean for measuring.
An impostor is what a Verify meets: another person presented under the claimed subject's
key (the edge makes every probe with the claimed subject's key).

- KEYED: cos(T(z_a, k), T(z_b, k)) for different people a, b under one key k, where
  T(z, k) is P(z, k) in the key's frame (an isometry: the same as the cosine of z).
- VIRTUAL: cos(R(G(x_a, k)), R(G(x_b, k))), rendered through the bundle's generator.
- RECOVERED: KVFA I(R(G(x_a, k)), k) against other people's z, and I(., k') with a wrong
  key k' against the person's own z (as ``kfaar export`` calibrates it).
- Fused probes (KEYED, VIRTUAL): three photos of one person fused as the edge fuses the
  frames of an attempt, against other people's single templates. Fusing removes noise
  from impostors' probes too and raises their scores, so they get their own threshold.

Everything runs the bundle's ONNX files (no torch). The manifest is not among the files
it hashes, so its digest check keeps working; sign a bundle only after calibrating it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from auth_service.policy import far_label

log = logging.getLogger(__name__)

FARS = (1e-3, 1e-4)
FUSED_VIEWS = 3  # the edge fuses the best three frames of an attempt


def threshold_at_far(impostor: np.ndarray, far: float) -> float:
    """Return the lowest threshold accepting at most a fraction ``far`` of impostors."""
    from training.evaluation.metrics import threshold_at_far as at_far

    return round(at_far(impostor, far), 4)


def impostor_scores(emb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cosines of every pair of rows with different labels (rows are unit vectors)."""
    out = []
    for i in range(0, len(emb), 512):
        s = emb[i : i + 512] @ emb.T
        rows = np.arange(i, min(i + 512, len(emb)))[:, None]
        keep = (labels[i : i + 512, None] != labels[None, :]) & (np.arange(len(emb))[None] > rows)
        out.append(s[keep])
    return np.concatenate(out).astype(np.float32)


def genuine_scores(emb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cosines of every pair of rows with the same label."""
    s = emb @ emb.T
    same = (labels[:, None] == labels[None, :]) & np.triu(np.ones(s.shape, bool), 1)
    return s[same]


def fused_probes(emb: np.ndarray, labels: np.ndarray, views: int = FUSED_VIEWS):
    """Fuse ``views`` photos of each identity that has one more; return the probes, their
    labels and the held-out photo of each (its genuine match)."""
    from edge_agent.attempts import fuse

    probes, owners, held_out = [], [], []
    for person in np.unique(labels):
        rows = np.flatnonzero(labels == person)
        if len(rows) > views:
            probes.append(fuse(emb[rows[1 : views + 1]], np.ones(views)))
            owners.append(person)
            held_out.append(rows[0])
    if not probes:
        return None
    return np.stack(probes), np.asarray(owners), np.asarray(held_out)


def _scores(emb: np.ndarray, labels: np.ndarray, out: dict, space: str, views: int) -> None:
    """Add one key's impostor and genuine scores, single and fused, to ``out``."""
    out["impostor"][space].append(impostor_scores(emb, labels))
    out["genuine"][space].append(genuine_scores(emb, labels))
    fused = fused_probes(emb, labels, views)
    if fused is None:  # nobody has views + 1 photos: no fused calibration
        return
    probes, owners, held_out = fused
    out["fused_impostor"][space].append((probes @ emb.T)[owners[:, None] != labels[None, :]])
    out["fused_genuine"][space].append((probes * emb[held_out]).sum(1))


def _sample(chips, n: int, people: int, views: int, rng) -> np.ndarray:
    """``n`` random faces plus ``views`` + 1 photos each of ``people`` identities."""
    counts = np.bincount(chips.labels)
    many = rng.permutation(np.flatnonzero(counts > views))[:people]
    rows = [np.flatnonzero(chips.labels == p)[: views + 1] for p in many]
    extra = np.concatenate(rows) if rows else np.zeros(0, int)
    rest = np.setdiff1d(np.arange(len(chips)), extra)
    pick = rng.choice(rest, size=min(max(n - len(extra), 0), len(rest)), replace=False)
    return np.sort(np.concatenate([extra, pick]).astype(int))


def calibrate(
    bundle,
    chips,
    keyed_faces: int,
    virtual_faces: int,
    keys: int,
    seed: int,
    views: int = FUSED_VIEWS,
) -> dict:
    """Return the manifest's ``operating_points`` and ``calibration`` entries."""
    from edge_agent.hpvfg import HpvfgAnonymizer
    from edge_agent.recognizer import l2_normalize

    rng = np.random.default_rng(seed)
    anon = HpvfgAnonymizer(bundle)
    key_list = [rng.bytes(32) for _ in range(keys)]
    kinds = ("impostor", "genuine", "fused_impostor", "fused_genuine")
    got: dict = {k: {"KEYED": [], "VIRTUAL": []} for k in kinds}
    got["impostor"]["RECOVERED"] = []

    idx = _sample(chips, keyed_faces, keyed_faces // 8, views, rng)
    labels = chips.labels[idx]
    for key in key_list:
        _scores(anon.keyed_template(chips.z[idx], key), labels, got, "KEYED", views)

    vidx = _sample(chips, virtual_faces, virtual_faces // 16, views, rng)
    vlabels, z = chips.labels[vidx], chips.z[vidx]
    for n, key in enumerate(key_list):
        log.info("rendering %d training faces under key %d of %d", len(vidx), n + 1, keys)
        virtual = np.concatenate(
            [
                anon.recognizer.embed_chips(anon.generate(chips.chips[j], chips.z[j], key))
                for j in np.array_split(vidx, max(1, len(vidx) // 32))
            ]
        )
        _scores(virtual, vlabels, got, "VIRTUAL", views)
        recovered = l2_normalize(anon.recover_embeddings(virtual, key))
        others = recovered @ z.T
        got["impostor"]["RECOVERED"].append(others[vlabels[:, None] != vlabels[None, :]])
        wrong = l2_normalize(anon.recover_embeddings(virtual, key_list[(n + 1) % keys]))
        if keys > 1:
            got["impostor"]["RECOVERED"].append((wrong * z).sum(1))
    cat = {kind: {k: np.concatenate(v) for k, v in d.items() if v} for kind, d in got.items()}
    points = {}
    for far in FARS:
        single = {k: threshold_at_far(s, far) for k, s in cat["impostor"].items()}
        fused = {k: threshold_at_far(s, far) for k, s in cat["fused_impostor"].items()}

        def accept(kind: str, thresholds: dict) -> dict:
            return {k: round(float((s >= thresholds[k]).mean()), 4) for k, s in cat[kind].items()}

        points[far_label(far)] = {
            "thresholds": single,
            "fused_thresholds": fused,
            "train_genuine_accept": accept("genuine", single),
            "train_fused_genuine_accept": accept("fused_genuine", fused),
        }
    meta = {
        "data": "LFW minus the identities of lfw_dev_triplets.txt (training identities)",
        "impostor": "another person under the claimed subject's key",
        "fused": f"{views} photos of one person fused (edge_agent.attempts.fuse)",
        "keyed_faces": len(idx),
        "virtual_faces": len(vidx),
        "identities": len(np.unique(labels)),
        "keys": keys,
        "seed": seed,
        "impostor_pairs": {k: len(s) for k, s in cat["impostor"].items()},
        "fused_impostor_pairs": {k: len(s) for k, s in cat["fused_impostor"].items()},
    }
    return {"operating_points": points, "calibration": meta}


def write_manifest(bundle_dir: Path, entries: dict) -> dict:
    """Merge ``entries`` into the bundle's manifest.json (its file digests stay as they are)."""
    path = bundle_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(entries)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, default=str) + "\n")
    tmp.replace(path)
    return manifest


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="calibrate a bundle's thresholds per space at FAR 1e-3 and 1e-4 (training faces)",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    p.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: shipped)")
    p.add_argument("--data-root", type=Path, default=None, help="default: $KFAAR_DATA_ROOT")
    p.add_argument("--keyed-faces", type=int, default=4000, help="faces for KEYED (4000)")
    p.add_argument("--virtual-faces", type=int, default=800, help="faces rendered (800)")
    p.add_argument("--keys", type=int, default=3, help="keys per face (3)")
    p.add_argument("--seed", type=int, default=2025)
    p.add_argument("--dry-run", action="store_true", help="print, do not write the manifest")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from edge_agent.assets import asset_path
    from edge_agent.hpvfg import DEFAULT_BUNDLE, Bundle
    from training.chips import ChipSet
    from training.hpvfg.cli import _chips

    for name in ("keyed_faces", "virtual_faces", "keys"):
        if getattr(args, name) < 2:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 2")
    bundle_dir = args.bundle or asset_path(DEFAULT_BUNDLE)
    bundle = Bundle.load(bundle_dir)
    train, _ = _chips(args.data_root)
    entries = calibrate(
        bundle, ChipSet.load(train), args.keyed_faces, args.virtual_faces, args.keys, args.seed
    )
    if not args.dry_run:
        write_manifest(bundle_dir, entries)
        Bundle.load(bundle_dir)  # the digests still check
    sys.stdout.write(json.dumps(entries["operating_points"], indent=1) + "\n")
    return 0
