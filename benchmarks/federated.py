"""Federated (IID, non-IID) vs centralized fine-tuning at equal data and compute.

Not a timed test. Every variant starts from the shipped bundle and sees the same faces
(the union of the sites); centralized fine-tuning runs rounds x sites x local-steps steps
on the union, as many as the federation runs in total. The dev metrics are the server's
(held-out identities). "retained" is the federated improvement of the dev score over the
shipped model, as a share of the centralized improvement (goal >= 0.95). With --dp, the
IID federation is rerun with local DP at each epsilon (utility vs privacy).

    python benchmarks/federated.py --out runs/fl-bench --sites 3 --rounds 3 --local-steps 5
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

log = logging.getLogger("benchmarks.federated")

KEYS = ("score", "anonymity", "diversity", "kvfa_cos", "kvfa_wrong_cos", "target_cos")


def _federated(args, scheme: str, out: Path, extra: dict) -> dict:
    from training.federated.local import LocalConfig
    from training.federated.pipeline import fl_local

    rc = {"local-steps": args.local_steps, "local-kvfa-steps": args.local_steps}
    rc |= {"batch": args.batch, "lr": args.lr, "kvfa-lr": args.kvfa_lr} | extra
    cfg = LocalConfig(
        out=out,
        sites=args.sites,
        rounds=args.rounds,
        scheme=scheme,
        max_identities=args.max_identities,
        max_images=args.max_images,
        dev_faces=args.dev_faces,
        export=False,
        run_config=rc,
    )
    t0 = time.perf_counter()
    fl_local(cfg)
    rows = json.loads((out / "metrics.json").read_text())["rounds"]
    trained = rows[1:]
    return {
        "base": rows[0],
        "final": rows[-1],
        "round_s": sum(r["round_s"] for r in trained) / len(trained),
        "bytes_per_round": trained[0]["bytes_sent"] + trained[0]["bytes_received"],
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def _centralized(args, fed_out: Path) -> dict:
    from training.chips import ChipSet
    from training.federated import task
    from training.federated.pipeline import merge

    sites = sorted((fed_out / "sites").glob("site-*"))
    union = merge([task.site_chips(s) for s in sites])
    dev = ChipSet.load(fed_out / "dev_chips.npz")
    models = task.load_models()
    steps = args.rounds * args.sites * args.local_steps
    cfg = task.LocalConfig(
        steps=steps, kvfa_steps=steps, batch=args.batch, lr=args.lr, kvfa_lr=args.kvfa_lr
    )
    t0 = time.perf_counter()
    task.fit_local(models, union, cfg)
    final = task.dev_metrics(models, dev, args.dev_faces)
    return {"final": final, "train_s": round(time.perf_counter() - t0, 1), "faces": len(union)}


def _table(res: dict) -> str:
    base = res["federated-iid"]["base"]["score"]
    gain = res["centralized"]["final"]["score"] - base
    lines = [
        "| variant | " + " | ".join(KEYS) + " | retained | round s | MB/round |",
        "|---" * (len(KEYS) + 4) + "|",
        "| shipped (round 0) | " + " | ".join(f"{base_v:.4f}" for base_v in
                                              (res["federated-iid"]["base"][k] for k in KEYS))
        + " | | | |",
    ]  # fmt: skip
    for name, r in res.items():
        m = r["final"]
        retained = (m["score"] - base) / gain if gain > 0 else float("nan")
        rs = f"{r['round_s']:.1f}" if "round_s" in r else ""
        mb = f"{r['bytes_per_round'] / 1e6:.1f}" if "bytes_per_round" in r else ""
        vals = " | ".join(f"{m[k]:.4f}" for k in KEYS)
        lines.append(f"| {name} | {vals} | {retained:.2f} | {rs} | {mb} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--local-steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=6)
    p.add_argument("--lr", type=float, default=1e-3, help="generator learning rate")
    p.add_argument("--kvfa-lr", type=float, default=5e-4, help="KVFA learning rate")
    p.add_argument("--dev-faces", type=int, default=60)
    p.add_argument("--max-identities", type=int, default=150)
    p.add_argument("--max-images", type=int, default=6)
    p.add_argument("--dp", type=float, nargs="*", default=[], help="epsilons to try")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    res = {"federated-iid": _federated(args, "iid", args.out / "iid", {})}
    res["centralized"] = _centralized(args, args.out / "iid")
    res["federated-noniid"] = _federated(args, "noniid", args.out / "noniid", {})
    for eps in args.dp:
        extra = {"dp": True, "dp-epsilon": eps}
        res[f"federated-iid-dp-eps{eps:g}"] = _federated(
            args, "iid", args.out / f"dp{eps:g}", extra
        )
    (args.out / "results.json").write_text(json.dumps(res, indent=1, default=float))
    (args.out / "results.md").write_text(_table(res))
    log.info("\n%s", _table(res))


if __name__ == "__main__":
    main()
