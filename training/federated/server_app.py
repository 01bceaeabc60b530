"""ServerApp: federate the shipped model's trainable weights, judge each round on dev faces.

FedAvg by default; ``strategy = "fedprox"`` (clients add the proximal term) or
``"fedadam"`` (server-side Adam on the averaged update) from the run config, and
``secagg = true`` for FedAvg under SecAgg+ (secure.py). The server
evaluates every aggregate centrally on held-out dev identities, writes ``metrics.json``
after each round and keeps the best round's weights as ``best.pt`` in ``kfaar train``'s
checkpoint format, ready for ``training.hpvfg.export.export_bundle``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

from training.chips import ChipSet
from training.federated import task
from training.hpvfg.from_bundle import checkpoint_state

log = logging.getLogger(__name__)

app = ServerApp()

STRATEGIES = ("fedavg", "fedprox", "fedadam")


def make_strategy(rc: dict) -> FedAvg:
    """Return the configured strategy; every site trains, evaluation is central only."""
    name = str(rc.get("strategy", "fedavg")).lower()
    nodes = int(rc["min-nodes"])
    common = {"fraction_train": 1.0, "fraction_evaluate": 0.0}
    common |= {"min_train_nodes": nodes, "min_available_nodes": nodes}
    if name == "fedavg":
        return FedAvg(**common)
    if name == "fedprox":
        return FedProx(**common, proximal_mu=float(rc["proximal-mu"]))
    if name == "fedadam":
        # eta_l only matters to FedOpt's bookkeeping; the clients use their own lr.
        return FedAdam(**common, eta=float(rc["server-lr"]), eta_l=float(rc["lr"]), tau=1e-6)
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")


class CentralEvaluator:
    """Evaluate each aggregate on dev chips; keep metrics, timings and the best round."""

    def __init__(self, rc: dict, models: task.Models, out: Path, nodes: int) -> None:
        from training.recognizer.export import load_port

        dev_path = Path(str(rc["dev-chips"]))
        if not dev_path.is_file():
            raise FileNotFoundError(f"run config dev-chips: no chip set at {dev_path}")
        self.dev = ChipSet.load(dev_path)
        self.models, self.out, self.nodes = models, out, nodes
        self.faces = int(rc["dev-faces"])
        self.seed = int(rc["seed"])
        self.record = Path(str(rc["record-dir"])) if rc.get("record-dir") else None
        # Local DP: per-round (eps, delta) of each site; basic composition over the rounds.
        self.dp = (float(rc["dp-epsilon"]), float(rc["dp-delta"])) if rc.get("dp") else None
        self.recognizer = load_port().eval()
        self.rows: list[dict] = []
        self.best: dict | None = None
        self.last = time.perf_counter()
        out.mkdir(parents=True, exist_ok=True)

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        started = time.perf_counter()
        state = arrays.to_torch_state_dict()
        task.load_trainable(self.models, state)
        if self.record is not None:
            self.record.mkdir(parents=True, exist_ok=True)
            np.savez(
                self.record / f"global-round{server_round}.npz",
                **{k: v.numpy() for k, v in state.items()},
            )
        metrics = task.dev_metrics(self.models, self.dev, self.faces, self.recognizer)
        row = {"round": server_round, **{k: round(v, 5) for k, v in metrics.items()}}
        payload = sum(v.numel() * v.element_size() for v in state.values())
        if server_round > 0:
            row["round_s"] = round(started - self.last, 2)
            row["bytes_sent"] = payload * self.nodes  # the global weights, to every site
            row["bytes_received"] = payload * self.nodes  # each site's update
        if self.dp is not None and server_round > 0:
            row["dp_epsilon"] = round(server_round * self.dp[0], 6)
            row["dp_delta"] = server_round * self.dp[1]
        row["eval_s"] = round(time.perf_counter() - started, 2)
        self.rows.append(row)
        # Round 0 is the shipped model: the best *federated* round becomes the new version.
        if server_round > 0 and (self.best is None or metrics["score"] > self.best["score"]):
            self.best = row
            self._checkpoint(server_round)
        self._write()
        self.last = time.perf_counter()
        return MetricRecord({k: float(v) for k, v in metrics.items()})

    def _checkpoint(self, server_round: int) -> None:
        m = self.models
        state = checkpoint_state(
            m.generator, m.kvfa, m.basis, step=server_round, seed=self.seed, history=self.rows
        )
        state["federated"] = {"round": server_round, "base_version": m.manifest["version"]}
        tmp = self.out / "best.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(self.out / "best.pt")

    def _write(self) -> None:
        doc = {"rounds": self.rows, "best_round": self.best["round"] if self.best else None}
        (self.out / "metrics.json").write_text(json.dumps(doc, indent=1))


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the configured strategy from the shipped model for ``num-server-rounds``."""
    rc = dict(context.run_config)
    bundle = Path(str(rc.get("start-bundle", "")) or task.default_bundle())
    models = task.load_models(bundle)
    initial = task.trainable_state(models)
    out = Path(str(rc["out-dir"])).expanduser()
    nodes = int(rc["min-nodes"])
    evaluate = CentralEvaluator(rc, models, out, nodes)
    digest = task.bundle_digest(bundle)
    if rc.get("secagg", False):
        _secure_main(grid, context, rc, initial, evaluate, digest)
        return
    strategy = make_strategy(rc)
    train_config = ConfigRecord({"base-digest": digest})
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(initial),
        num_rounds=int(rc["num-server-rounds"]),
        train_config=train_config,
        evaluate_fn=evaluate,
    )
    for server_round, agg in result.train_metrics_clientapp.items():
        for row in evaluate.rows:
            if row["round"] == server_round:
                row |= {f"train_{k}": round(float(v), 5) for k, v in agg.items()}
    evaluate.rows[0]["strategy"] = type(strategy).__name__
    evaluate._write()
    log.info("federated run done; best round %s", evaluate.best and evaluate.best["round"])


def _secure_main(grid, context, rc, initial, evaluate: CentralEvaluator, digest: str) -> None:
    """SecAgg+ rounds (FedAvg only: Flower runs SecAgg+ on its legacy path)."""
    from training.federated import secure

    if str(rc.get("strategy", "fedavg")).lower() != "fedavg" or rc.get("dp", False):
        raise ValueError("secagg runs with strategy = fedavg and without dp")

    def judge(server_round: int, state) -> dict[str, float]:
        return dict(evaluate(server_round, ArrayRecord(state)))

    nodes, rounds = int(rc["min-nodes"]), int(rc["num-server-rounds"])
    fit_config = {"base-digest": digest}
    max_weight = float(rc.get("secagg-max-weight", 1000))
    secure.run_server(grid, context, initial, rounds, nodes, fit_config, judge, max_weight)
    evaluate.rows[0]["strategy"] = "FedAvg+SecAgg+"
    evaluate._write()
