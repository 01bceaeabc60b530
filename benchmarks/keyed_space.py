"""KEYED against VIRTUAL templates on the LFW dev identities: accuracy, linkability, attacks.

- Verification at the bundle's calibrated operating points (FAR 1e-3 and 1e-4, set on
  training identities by ``kfaar calibrate``): genuine accept rate and the impostor accept
  rate measured here, for one probe per attempt and for multi-frame attempts (the other
  photos of a person fused as frames). Impostor: another person under the claimed key.
- Unlinkability D_sys (Gomez-Barrero et al. 2018) between templates of one person under
  two keys, per space; with cosine as the linking score, and for KEYED also with the
  key-invariant signature an attacker who knows the public bundle can compute (the norm
  of each rotation band and the mean component). KEYED_P_ONLY is P(z, k) without the
  key's frame, the design the frame replaced.
- An attacker without the key: the best regression from a stolen keyed template z' back
  to z (ridge and an MLP, trained on pairs made under random keys from training faces),
  scored by cosine to the true z against chance (the population mean).
- An attacker with a site key (one key for everyone): how many (z, z') pairs of other
  people undo the projector (least squares, Procrustes, band-aware Procrustes).

Every embedding is the system recognizer's flip-averaged one on YuNet-aligned chips. The
virtual faces are rendered on the chip (as ``kfaar export`` calibrates), not pasted back.

Run: python benchmarks/keyed_space.py [--out out/keyed_space.json]   (about 5 minutes)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from auth_service.policy import operating_thresholds
from edge_agent.assets import cache_dir
from edge_agent.attempts import fuse
from edge_agent.hpvfg import HpvfgAnonymizer
from edge_agent.recognizer import l2_normalize
from training.chips import ChipSet, build_chip_set, list_images
from training.datasets import data_root, identity_of, read_triplets

log = logging.getLogger("keyed_space")
SPACES = ("KEYED", "VIRTUAL")


def dev_chips() -> ChipSet:
    """Every LFW image of the dev identities (not only the triplets'), cached."""
    root = data_root()
    dev, _ = read_triplets(root / "splits" / "lfw_dev_triplets.txt")
    ids = {identity_of(p) for t in dev for p in (t.x1, t.x2, t.y)}
    path = cache_dir() / "chips" / "dev_all_chips.npz"
    if not path.is_file():
        rels = [r for r in list_images(root / "lfw") if identity_of(r) in ids]
        build_chip_set(root / "lfw", rels).save(path)
    return ChipSet.load(path)


def train_chips() -> ChipSet:
    from training.hpvfg.cli import _chips

    return ChipSet.load(_chips(None)[0])


class Templates:
    """Templates of a chip set under a key, in each space."""

    def __init__(self, anon: HpvfgAnonymizer, chips: ChipSet) -> None:
        self.anon, self.chips = anon, chips
        self._rendered: dict[bytes, np.ndarray] = {}  # rendering is the slow part

    def keyed(self, key: bytes, idx=None) -> np.ndarray:
        z = self.chips.z if idx is None else self.chips.z[idx]
        return self.anon.keyed_template(z, key)

    def projected(self, key: bytes, idx=None) -> np.ndarray:
        """P(z, k) alone, without the key's frame: the design the frame replaced."""
        z = self.chips.z if idx is None else self.chips.z[idx]
        return l2_normalize(self.anon.virtual_identity(z, key))

    def virtual(self, key: bytes, idx=None) -> np.ndarray:
        if idx is None and key in self._rendered:
            return self._rendered[key]
        rows = np.arange(len(self.chips)) if idx is None else np.asarray(idx)
        out = []
        for j in np.array_split(rows, max(1, len(rows) // 32)):
            chips = self.anon.generate(self.chips.chips[j], self.chips.z[j], key)
            out.append(self.anon.recognizer.embed_chips(chips))
        if idx is None:
            self._rendered[key] = np.concatenate(out)
            return self._rendered[key]
        return np.concatenate(out)

    def space(self, name: str, key: bytes, idx=None) -> np.ndarray:
        make = {"KEYED": self.keyed, "KEYED_P_ONLY": self.projected, "VIRTUAL": self.virtual}
        return make[name](key, idx)


def pair_scores(a: np.ndarray, b: np.ndarray, la, lb, same: bool, skip_diag: bool) -> np.ndarray:
    s = a @ b.T
    mask = (la[:, None] == lb[None, :]) if same else (la[:, None] != lb[None, :])
    if skip_diag:
        np.fill_diagonal(mask, False)
    return s[mask]


def d_sys(mated: np.ndarray, nonmated: np.ndarray, bins: int = 30) -> float:
    """D_sys of Gomez-Barrero et al.: the mated-weighted mean of D(s) = 2 LR/(1+LR) - 1."""
    lo, hi = min(mated.min(), nonmated.min()), max(mated.max(), nonmated.max())
    edges = np.linspace(lo, hi + 1e-9, bins + 1)
    pm = np.histogram(mated, edges)[0] / len(mated)
    pn = np.histogram(nonmated, edges)[0] / len(nonmated)
    with np.errstate(divide="ignore", invalid="ignore"):
        lr = np.where(pn > 0, pm / pn, np.inf)
        d = np.where(lr > 1, np.where(np.isinf(lr), 1.0, 2 * lr / (1 + lr) - 1), 0.0)
    return float((pm * d).sum())


def d_sys_floor(nonmated: np.ndarray, n: int, rng, trials: int = 20) -> float:
    """The estimator's noise floor: D_sys of ``n`` non-mated scores posing as mated ones."""
    out = []
    for _ in range(trials):
        pick = rng.choice(len(nonmated), size=n, replace=False)
        rest = np.delete(nonmated, pick)
        out.append(d_sys(nonmated[pick], rest))
    return float(np.mean(out))


def verification(t: Templates, thresholds: dict, keys: list[bytes]) -> dict:
    """Genuine and impostor accept rates, single probe and multi-frame, at each FAR."""
    labels = t.chips.labels
    res = {}
    for space in SPACES:
        gen1, imp1, genm, impm = [], [], [], []
        for key in keys:
            e = t.space(space, key)
            gen1.append(pair_scores(e, e, labels, labels, True, True))
            imp1.append(pair_scores(e, e, labels, labels, False, False))
            # Multi-frame: each photo of a person with 4+ photos enrolls; up to 3 of the
            # others, fused with equal weights, are one probe (the frames of an attempt).
            probes, plab, own = [], [], []
            for person in np.unique(labels):
                rows = np.flatnonzero(labels == person)
                if len(rows) < 4:
                    continue
                for i in rows:
                    others = [r for r in rows if r != i][:3]
                    probes.append(fuse(e[others], np.ones(len(others))))
                    plab.append(person)
                    own.append(i)
            probes = np.stack(probes)
            genm.append((probes * e[own]).sum(1))
            impm.append(pair_scores(probes, e, np.asarray(plab), labels, False, False))
        g1, i1, gm, im = (np.concatenate(x) for x in (gen1, imp1, genm, impm))
        res[space] = {
            "pairs": {"genuine": len(g1), "impostor": len(i1)},
            "multi_frame_pairs": {"genuine": len(gm), "impostor": len(im)},
        }
        for far, (single, fused) in thresholds.items():
            th, tf = single[space], fused.get(space, single[space])
            res[space][far] = {
                "threshold": th,
                "fused_threshold": tf,
                "single_genuine_accept": round(float((g1 >= th).mean()), 4),
                "single_impostor_accept": float((i1 >= th).mean()),
                "multi_genuine_accept": round(float((gm >= tf).mean()), 4),
                "multi_impostor_accept": float((im >= tf).mean()),
                # multi-frame probes held to the single-probe threshold: why fused ones
                # get their own
                "multi_at_single_threshold": {
                    "genuine_accept": round(float((gm >= th).mean()), 4),
                    "impostor_accept": float((im >= th).mean()),
                },
            }
    return res


def linkability(
    t: Templates, keys: list[bytes], basis, bands, rng, spaces=(*SPACES, "KEYED_P_ONLY")
) -> dict:
    """D_sys between templates of one person under two keys, averaged over key pairs.

    One mated pair per person (their first two photos, one under each key), so that people
    with many photos do not dominate; non-mated: every pair of different people. The noise
    floor is the same estimator on as many non-mated pairs posing as mated ones.
    """
    labels = t.chips.labels
    people = np.flatnonzero(np.bincount(labels) >= 2)
    first = np.array([np.flatnonzero(labels == p)[0] for p in people])
    second = np.array([np.flatnonzero(labels == p)[1] for p in people])
    out = {"people": len(people), "key_pairs": len(keys) * (len(keys) - 1) // 2}
    for space in spaces:
        runs = {"cosine": [], "floor": [], "invariant_signature": []}
        for i in range(len(keys)):
            for j in range(i + 1, len(keys)):
                a, b = t.space(space, keys[i])[first], t.space(space, keys[j])[second]
                s = a @ b.T
                mated, non = np.diag(s), s[~np.eye(len(s), dtype=bool)]
                runs["cosine"].append(d_sys(mated, non))
                runs["floor"].append(d_sys_floor(non, len(mated), rng))
                if space.startswith("KEYED"):
                    sa, sb = signature(a, basis, bands), signature(b, basis, bands)
                    d = -np.linalg.norm(sa[:, None] - sb[None], axis=-1)
                    runs["invariant_signature"].append(
                        d_sys(np.diag(d), d[~np.eye(len(d), dtype=bool)])
                    )
        out[space] = {k: round(float(np.mean(v)), 4) for k, v in runs.items() if v}
    return out


def keyed_linkability(anon, train: ChipSet, basis, bands, rng) -> dict:
    """KEYED alone needs no rendering: 1,000 people and 10 key pairs bring the floor down."""
    two = Templates(anon, _two_photos_each(train, 1000, rng))
    keys = [rng.bytes(32) for _ in range(5)]
    return linkability(two, keys, basis, bands, rng, ("KEYED", "KEYED_P_ONLY"))


def signature(t: np.ndarray, basis, bands) -> np.ndarray:
    """What a band rotation leaves unchanged: the mean component and each band's norm."""
    mean_dir, b = basis
    y = t @ b  # (N, 127) coordinates in the principal directions
    parts, start = [t @ mean_dir], 0
    for n in bands:
        parts.append(np.linalg.norm(y[:, start : start + n], axis=1))
        start += n
    return np.stack(parts, 1)


def keyless_attack(anon, train: ChipSet, dev: ChipSet, threshold: float, rng, framed=True) -> dict:
    """Regress z from a KEYED template under fresh random keys; score on dev faces."""
    from sklearn.linear_model import Ridge
    from sklearn.neural_network import MLPRegressor

    def pairs(chips: ChipSet, n: int):
        idx = rng.choice(len(chips), size=min(n, len(chips)), replace=False)
        make = anon.keyed_template if framed else anon.virtual_identity
        zk = l2_normalize(np.concatenate([make(chips.z[i : i + 1], rng.bytes(32)) for i in idx]))
        return zk, chips.z[idx]

    xtr, ytr = pairs(train, 8000)
    xte, yte = pairs(dev, len(dev))
    mean = l2_normalize(ytr.mean(0, keepdims=True))[0]
    res = {
        "train_pairs": len(xtr),
        "test_pairs": len(xte),
        "chance_population_mean": round(float((yte @ mean).mean()), 4),
        "chance_other_person": round(float((yte @ np.roll(yte, 1, 0).T).diagonal().mean()), 4),
    }
    models = {
        "ridge": Ridge(alpha=1.0),
        "mlp": MLPRegressor(
            hidden_layer_sizes=(512, 512), max_iter=100, early_stopping=True, random_state=0
        ),
    }
    for name, model in models.items():
        pred = l2_normalize(model.fit(xtr, ytr).predict(xte))
        cos = (pred * yte).sum(1)
        rank1 = float((np.argmax(pred @ yte.T, 1) == np.arange(len(yte))).mean())
        res[name] = {
            "cosine": round(float(cos.mean()), 4),
            "accepted_as_the_person": round(float((cos >= threshold).mean()), 4),
            "rank1_among_dev": round(rank1, 4),
        }
    res["rank1_chance"] = round(1 / len(yte), 4)
    return res


def site_key_attack(anon, train, dev, basis, bands, threshold, rng, framed=True) -> dict:
    """Pairs of other people under one site key: how many undo the projector."""
    key = rng.bytes(32)
    mean_dir, b = basis
    zt = dev.z
    make = anon.keyed_template if framed else anon.virtual_identity
    target = l2_normalize(make(zt, key))
    res = {}
    for n in (8, 16, 22, 32, 64, 96, 128, 160, 256):
        idx = rng.choice(len(train), size=n, replace=False)
        z, zk = train.z[idx], l2_normalize(make(train.z[idx], key))
        est = {}
        w, *_ = np.linalg.lstsq(zk, z, rcond=None)  # generic linear map z' -> z
        est["least_squares"] = target @ w
        u, _, vt = np.linalg.svd(zk.T @ z)  # orthogonal Procrustes over all 128 dimensions
        est["procrustes"] = target @ (u @ vt)
        # Band-aware: the bands and basis ship in the bundle; solve each band's rotation.
        yk, y, yt = zk @ b, z @ b, target @ b
        rec, start = np.zeros_like(yt), 0
        for m in bands:
            s = slice(start, start + m)
            u, _, vt = np.linalg.svd(yk[:, s].T @ y[:, s])
            rec[:, s] = yt[:, s] @ (u @ vt)
            start += m
        est["band_procrustes"] = np.outer(target @ mean_dir, mean_dir) + rec @ b.T
        res[n] = {}
        for name, e in est.items():
            cos = (l2_normalize(e) * zt).sum(1)
            res[n][name] = {
                "cosine": round(float(cos.mean()), 4),
                "accepted_as_the_person": round(float((cos >= threshold).mean()), 4),
            }
    return res


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/keyed_space.json"))
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--only-verification", action="store_true", help="skip the rest")
    parser.add_argument("--skip-attacks", action="store_true", help="no regression attacks")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rng = np.random.default_rng(args.seed)
    anon = HpvfgAnonymizer(threads=1)
    manifest = anon.bundle.manifest
    thresholds = {
        far: (
            operating_thresholds(manifest, float(far)),
            operating_thresholds(manifest, float(far), True),
        )
        for far in ("1e-3", "1e-4")
    }
    basis = _basis(anon)
    bands = anon.bundle.bands
    dev, train = dev_chips(), train_chips()
    t = Templates(anon, dev)
    keys = [rng.bytes(32) for _ in range(3)]
    log.info("verification on %d dev faces of %d people", len(dev), len(np.unique(dev.labels)))
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after each section: a late failure keeps what was measured
        args.out.write_text(json.dumps(result, indent=1))

    result = {"verification": verification(t, thresholds, keys)}
    save()
    if args.only_verification:
        return 0
    log.info("linkability")
    result["linkability_dev"] = linkability(t, keys, basis, bands, rng)
    two = _two_photos_each(train, 500, rng)
    result["linkability_train"] = linkability(Templates(anon, two), keys, basis, bands, rng)
    result["linkability_train_keyed"] = keyed_linkability(anon, train, basis, bands, rng)
    save()
    if args.skip_attacks:
        return 0
    log.info("attacks")
    thr = thresholds["1e-3"][0]["KEYED"]
    result["keyless_attack"] = keyless_attack(anon, train, dev, thr, rng)
    result["keyless_attack_p_only"] = keyless_attack(anon, train, dev, thr, rng, framed=False)
    result["site_key_attack"] = site_key_attack(anon, train, dev, basis, bands, thr, rng)
    result["site_key_attack_p_only"] = site_key_attack(
        anon, train, dev, basis, bands, thr, rng, framed=False
    )
    save()
    sys.stdout.write(json.dumps(result, indent=1) + "\n")
    return 0


def _basis(anon: HpvfgAnonymizer):
    """The projector's mean direction and principal basis, read from the shipped ONNX."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(anon.bundle.file("projector.onnx")))
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return init["mean_dir"].astype(np.float32), init["basis"].astype(np.float32)


def _two_photos_each(chips: ChipSet, people: int, rng) -> ChipSet:
    """Two photos each of ``people`` training identities with two or more photos."""
    counts = np.bincount(chips.labels)
    pick = rng.choice(np.flatnonzero(counts >= 2), size=people, replace=False)
    rows = [rng.choice(np.flatnonzero(chips.labels == p), 2, replace=False) for p in pick]
    return chips.subset(np.sort(np.concatenate(rows)))


if __name__ == "__main__":
    sys.exit(main())
