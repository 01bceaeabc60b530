"""Compare projector designs in embedding space: the paper's MLP and the keyed band rotation.

Both are judged on held-out dev identities with the system's operating threshold:
anonymity, diversity, differentiation and synchronism of P(z, k), and KVFA through each
design's inverse (analytic for the rotation, a learned MLP for the others), including
the acceptance of keys with 1, 3, 5 and 16 wrong bits. "MLP, raw key bits" feeds the key
bits straight in, as the paper's code does; "MLP, hashed" feeds BLAKE2b-derived bits.

Run: python benchmarks/projectors.py [--steps 1500]   (needs the chip sets of kfaar train)
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from torch import nn

from edge_agent.assets import cache_dir
from edge_agent.keys import flip_bits
from edge_agent.recognizer import SAME_PERSON_THRESHOLD as T
from training.evaluation.metrics import auc
from training.hpvfg.losses import apart, together
from training.hpvfg.projector import MLPProjector, RotationBasis, RotationProjector, key_bits

BITS = (1, 3, 5, 16)


def raw_bits(key: bytes) -> np.ndarray:
    return np.unpackbits(np.frombuffer(key, np.uint8)).astype(np.float32) * 2 - 1


class MLPDesign:
    """P = MLP([z, bits]); I = MLP([z', bits]) trained with the KVFA losses."""

    def __init__(self, bits_of, steps: int, z: np.ndarray, labels: np.ndarray) -> None:
        self.bits_of, self.proj = bits_of, MLPProjector()
        self.inv = nn.Sequential(nn.Linear(128 + 256, 512), nn.GELU(), nn.Linear(512, 128))
        rng = np.random.default_rng(0)
        by_id = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        multi = [i for i in by_id if len(i) >= 2]
        opt = torch.optim.Adam([*self.proj.parameters(), *self.inv.parameters()], lr=1e-3)
        zt = torch.from_numpy(z)
        for _ in range(steps):
            pairs = [
                rng.choice(multi[j], 2, replace=False) for j in rng.integers(len(multi), size=256)
            ]
            i1, i2 = np.array(pairs).T
            iy = rng.integers(len(z), size=256)
            keys = [rng.bytes(32) for _ in range(256)]
            b1 = self.bits(keys)
            b2 = self.bits([rng.bytes(32) for _ in range(256)])
            bw = self.bits([flip_bits(k, int(rng.choice(BITS)), rng) for k in keys])
            p1, p2, py = self.proj(zt[i1], b1), self.proj(zt[i2], b1), self.proj(zt[iy], b1)
            loss = (
                together(p1, p2)
                + apart(p1, zt[i1], 0.7)
                + apart(p1, self.proj(zt[i1], b2), 0.7)
                + apart(p1, py, 0.7)
                + together(self.invert(p1, b1), zt[i2])
                + apart(self.invert(p1, bw), zt[i1], 0.7)
            )
            opt.zero_grad()
            loss.backward()
            opt.step()

    def bits(self, keys: list[bytes]) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.bits_of(k) for k in keys]))

    def invert(self, zv: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.inv(torch.cat([zv, bits], 1)), dim=1)

    @torch.no_grad()
    def forward(self, z: np.ndarray, key: bytes) -> np.ndarray:
        b = self.bits([key]).expand(len(z), -1)
        return self.proj(torch.from_numpy(z), b).numpy()

    @torch.no_grad()
    def inverse(self, zv: np.ndarray, key: bytes) -> np.ndarray:
        return self.invert(torch.from_numpy(zv), self.bits([key]).expand(len(zv), -1)).numpy()


class RotationDesign:
    def __init__(self, z: np.ndarray) -> None:
        self.basis = RotationBasis.fit(z)
        self.proj = RotationProjector(self.basis)

    @torch.no_grad()
    def forward(self, z: np.ndarray, key: bytes) -> np.ndarray:
        return self.proj(torch.from_numpy(z), torch.from_numpy(self.basis.rotation(key))).numpy()

    @torch.no_grad()
    def inverse(self, zv: np.ndarray, key: bytes) -> np.ndarray:
        rot = torch.from_numpy(self.basis.rotation(key))
        return self.proj.inverse(torch.from_numpy(zv), rot).numpy()


def evaluate(design, z: np.ndarray, labels: np.ndarray, keys: int = 40) -> dict:
    """Score a design on dev embeddings: one key per identity draw, pairs within/between."""
    rng = np.random.default_rng(1)
    cos = lambda a, b: (a * b).sum(1)  # noqa: E731
    same = np.flatnonzero(np.r_[False, labels[1:] == labels[:-1]])  # (i-1, i) same person
    res = {k: [] for k in ("anon", "div", "diff", "gen", "imp", "crr")}
    wrong = {b: [] for b in BITS}
    for _ in range(keys):
        k1, k2 = rng.bytes(32), rng.bytes(32)
        p1, p2 = design.forward(z, k1), design.forward(z, k2)
        perm = rng.permutation(len(z))
        other = labels[perm] != labels
        res["anon"].append(cos(p1, z) < T)
        res["div"].append(cos(p1, p2) < T)
        res["diff"].append(cos(p1, p1[perm])[other] < T)
        res["gen"].append(cos(p1[same], p1[same - 1]))
        res["imp"].append(cos(p1, p1[perm])[other])
        res["crr"].append(cos(design.inverse(p1[same], k1), z[same - 1]) >= T)
        for b in BITS:
            wrong[b].append(cos(design.inverse(p1, flip_bits(k1, b, rng)), z) >= T)
    cat = {k: np.concatenate(v) for k, v in res.items()}
    out = {
        "anonymity": cat["anon"].mean(),
        "diversity": cat["div"].mean(),
        "differentiation": cat["diff"].mean(),
        "synchronism AUC": auc(cat["gen"], cat["imp"]),
        "KVFA CRR (other photo)": cat["crr"].mean(),
    }
    out |= {f"accept, {b} wrong bits": np.concatenate(wrong[b]).mean() for b in BITS}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500, help="MLP training steps")
    args = parser.parse_args()
    torch.manual_seed(0)
    sets = {}
    for name in ("train", "dev"):
        with np.load(cache_dir() / "chips" / f"{name}_chips.npz") as f:
            sets[name] = (f["z"], f["labels"])
    (zt, lt), (zd, ld) = sets["train"], sets["dev"]
    designs = {
        "band rotation (shipped)": RotationDesign(zt),
        "MLP, hashed key bits": MLPDesign(key_bits, args.steps, zt, lt),
        "MLP, raw key bits (paper)": MLPDesign(raw_bits, args.steps, zt, lt),
    }
    results = {name: evaluate(d, zd, ld) for name, d in designs.items()}
    metrics = list(next(iter(results.values())))
    lines = ["| metric | " + " | ".join(results) + " |", "|---" * (len(results) + 1) + "|"]
    for m in metrics:
        lines.append(f"| {m} | " + " | ".join(f"{r[m]:.4f}" for r in results.values()) + " |")
    sys.stdout.write(f"dev embeddings: {len(zd)}, threshold {T}\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
