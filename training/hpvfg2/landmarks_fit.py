"""Teach the tiny landmark regressor from dlib's 68-point shape predictor, on training chips.

    python -m training.hpvfg2.landmarks_fit --chips ~/.cache/kfaar/chips/train_chips.npz \
        --work out/landmarks --out training/assets/landmarks68.pt

Labels are cached in ``--work`` (resumable); identities of the dev triplets are refused, and
a tenth of the training identities (by name hash) is held out to measure the error.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from edge_agent.progress import progress
from training.chips import ChipSet
from training.datasets import identity_of
from training.hpvfg2.landmarks import INPUT, LandmarkNet, landmark_error

log = logging.getLogger(__name__)
FALLBACK_RECT = (18, 18, 142, 142)  # the detector's median box on DLIB_150 chips


def dlib_models() -> Path:
    """Folder of face_recognition_models' weights (its import needs pkg_resources, so find it)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("face_recognition_models is not installed (the eval extra)")
    return Path(spec.origin).parent / "models"


def label_chips(chips: np.ndarray) -> np.ndarray:
    """Return dlib's 68 landmarks (N, 68, 2) in 0..1 of the chip for BGR chips (N, 150, 150, 3)."""
    import dlib

    predictor = dlib.shape_predictor(str(dlib_models() / "shape_predictor_68_face_landmarks.dat"))
    detector = dlib.get_frontal_face_detector()
    out = np.zeros((len(chips), 68, 2), np.float32)
    for i in progress(range(len(chips)), desc="dlib landmarks"):
        canvas = np.zeros((300, 300, 3), np.uint8)  # room around the chip for the detector
        canvas[75:225, 75:225] = chips[i][:, :, ::-1]
        found = detector(canvas, 0)
        r = found[0] if found else dlib.rectangle(*(v + 75 for v in FALLBACK_RECT))
        shape = predictor(canvas, r)
        pts = [(p.x - 75 + 0.5, p.y - 75 + 0.5) for p in shape.parts()]
        out[i] = np.asarray(pts, np.float32) / 150.0
    return out


def held_out(names: list[str], share: float = 0.1) -> np.ndarray:
    """Boolean mask: identities whose name hash falls in the held-out share."""
    h = [int(hashlib.sha256(n.encode()).hexdigest()[:8], 16) / 2**32 for n in names]
    return np.asarray(h) < share


def to_input(chips: np.ndarray) -> torch.Tensor:
    """BGR uint8 (N, 150, 150, 3) -> RGB (N, 3, 150, 150) in -1..1."""
    return torch.from_numpy(chips[..., ::-1].copy()).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def fit(
    chips: np.ndarray, marks: np.ndarray, steps: int, width: int = 16, seed: int = 0
) -> LandmarkNet:
    """Train the regressor with an L1 loss on points, small shifts and gain as augmentation."""
    torch.manual_seed(seed)
    net = LandmarkNet(width)
    net.mean_shape.copy_(torch.from_numpy(marks.mean(0)))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    rng = np.random.default_rng(seed)
    y_all = torch.from_numpy(marks)
    a = net.resample
    small = torch.cat([a @ to_input(chips[i : i + 256]) @ a.T for i in range(0, len(chips), 256)])
    for step in progress(range(steps), desc="fit landmarks"):
        idx = torch.from_numpy(rng.integers(0, len(chips), 32))
        x, y = small[idx], y_all[idx].clone()
        dx, dy = rng.integers(-3, 4, 2)  # shift chip and labels together: not every face is centred
        x = torch.roll(x, (int(dy), int(dx)), (2, 3))
        y += torch.tensor([dx, dy], dtype=torch.float32) / INPUT
        x = x * float(rng.uniform(0.7, 1.2)) + float(rng.uniform(-0.15, 0.15))
        loss = (net.from_small(x) - y).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0:
            log.info("step %d loss %.5f", step, float(loss))
    return net.eval()


def save(net: LandmarkNet, path: Path) -> None:
    """Write float16 weights (the buffers are rebuilt, except the mean shape)."""
    state = {k: v.half() for k, v in net.state_dict().items() if k != "resample"}
    state["width"] = torch.tensor(net.convs[0].out_channels)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


def main(argv: list[str] | None = None) -> int:
    """Label, train, measure on held-out identities, save."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--chips", type=Path, required=True, help="ChipSet .npz of training chips")
    p.add_argument("--triplets", type=Path, help="dev triplets whose identities must be absent")
    p.add_argument("--work", type=Path, default=Path("out/landmarks"), help="label cache")
    p.add_argument("--out", type=Path, default=Path("training/assets/landmarks68.pt"))
    p.add_argument("--max-chips", type=int, default=4000)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--width", type=int, default=16)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)  # a tiny network: on a shared machine, one thread is fastest
    cs = ChipSet.load(a.chips)
    names = [identity_of(str(r)) for r in cs.paths]
    if a.triplets is not None:
        dev = {identity_of(t) for line in a.triplets.read_text().split("\n") for t in line.split()}
        if dev & set(names):
            raise SystemExit(
                f"{a.chips}: holds dev identities, e.g. {sorted(dev & set(names))[:3]}"
            )
    keep = np.random.default_rng(0).permutation(len(cs))[: a.max_chips]
    keep.sort()
    a.work.mkdir(parents=True, exist_ok=True)
    cache = a.work / f"labels-{len(keep)}.npz"
    if cache.is_file():
        marks = np.load(cache)["marks"]
    else:
        marks = label_chips(cs.chips[keep])
        np.savez(cache, marks=marks, keep=keep)
    chips = cs.chips[keep]
    test = held_out([names[i] for i in keep])
    t0 = time.time()
    net = fit(chips[~test], marks[~test], a.steps, a.width)
    with torch.no_grad():
        pred = torch.cat(
            [net(to_input(chips[test][i : i + 256])) for i in range(0, test.sum(), 256)]
        )
    ref = torch.from_numpy(marks[test])
    nme = landmark_error(pred, ref)
    px = ((pred - ref).norm(dim=-1) * 150).mean(1)
    save(net, a.out)
    report = {
        "train_chips": int((~test).sum()),
        "held_out_chips": int(test.sum()),
        "held_out_identities": len({names[i] for i in keep[test]}),
        "nme_outer_eyes_mean": float(nme.mean()),
        "nme_outer_eyes_median": float(nme.median()),
        "px_error_mean_150": float(px.mean()),
        "steps": a.steps,
        "fit_seconds": round(time.time() - t0, 1),
        "weights_bytes": a.out.stat().st_size,
        "params": sum(p.numel() for p in net.parameters()),
    }
    (a.work / "report.json").write_text(json.dumps(report, indent=2))
    log.info("%s", json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
