"""SecAgg+: the server learns only the sum of the sites' updates, never one site's.

Flower 1.42 runs SecAgg+ on its legacy path only (``SecAggPlusWorkflow`` on the server,
``secaggplus_mod`` on the sites), so this module speaks that path's FitIns/FitRes.
Sites send *updates* (local minus global weights), not weights: SecAgg+ clips values to
``clipping_range`` before quantizing them, and the generator's linear map holds weights up
to about 65 while a round's update stays far below 1. The server adds the securely
averaged update to the global weights.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch
from flwr.app import Context, Message
from flwr.common import (
    Code,
    FitRes,
    Parameters,
    Scalar,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

log = logging.getLogger(__name__)

# A site's update must stay inside [-CLIP, CLIP] per weight: Adam moves a weight by at most
# about lr per step, so a round of 40 steps at lr 1e-3 stays below 0.04. SecAgg+ quantizes
# n / max_weight * update in steps of 2 * CLIP / 2**22, so a tight range keeps precision.
CLIP = 0.25


class UpdateFedAvg(FedAvg):
    """FedAvg over updates: the securely averaged update is added to the global weights."""

    def __init__(self, initial: list[np.ndarray], **kwargs) -> None:
        super().__init__(initial_parameters=ndarrays_to_parameters(initial), **kwargs)
        self.current = [a.copy() for a in initial]

    def aggregate_fit(self, server_round, results, failures):
        update, metrics = super().aggregate_fit(server_round, results, failures)
        if update is None:
            return None, metrics
        delta = parameters_to_ndarrays(update)
        self.current = [w + d for w, d in zip(self.current, delta, strict=True)]
        return ndarrays_to_parameters(self.current), metrics


def run_server(
    grid,
    context: Context,
    initial: OrderedDict[str, torch.Tensor],
    rounds: int,
    nodes: int,
    fit_config: dict[str, Scalar],
    evaluate: Callable[[int, OrderedDict[str, torch.Tensor]], dict[str, float]],
    max_weight: float = 1000.0,
) -> None:
    """Run ``rounds`` of FedAvg with SecAgg+ from ``initial``, evaluating each aggregate."""
    names = list(initial)

    def evaluate_fn(server_round: int, arrays: list[np.ndarray], _config: dict):
        state = OrderedDict((n, torch.from_numpy(a)) for n, a in zip(names, arrays, strict=True))
        metrics = evaluate(server_round, state)
        return -metrics["score"], metrics

    strategy = UpdateFedAvg(
        [t.numpy() for t in initial.values()],
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=nodes,
        min_available_clients=nodes,
        evaluate_fn=evaluate_fn,
        on_fit_config_fn=lambda r: {**fit_config, "server-round": r},
    )
    config = ServerConfig(num_rounds=rounds)
    legacy = LegacyContext(context=context, config=config, strategy=strategy)
    # Every site holds a share of every other site's mask key; any half of them can
    # rebuild a dropped site's mask, no smaller coalition can.
    secagg = SecAggPlusWorkflow(
        num_shares=1.0,
        reconstruction_threshold=0.5,
        clipping_range=CLIP,
        # Sites weigh by their examples, capped at max_weight: set it near the largest
        # site's count, since a site contributes n / max_weight of the quantized range.
        max_weight=max_weight,
    )
    DefaultWorkflow(fit_workflow=secagg)(grid, legacy)


def site_round(
    msg: Message,
    names: list[str],
    fit: Callable[[OrderedDict[str, torch.Tensor], dict], tuple[dict, int, dict]],
) -> Message:
    """Answer a legacy FitIns: train from its weights, return the clipped update as FitRes."""
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    start = parameters_to_ndarrays(fitins.parameters)
    state = OrderedDict((n, torch.from_numpy(a.copy())) for n, a in zip(names, start, strict=True))
    trained, n, metrics = fit(state, dict(fitins.config))
    update = [trained[k].numpy() - a for k, a in zip(names, start, strict=True)]
    peak = max(float(np.abs(u).max()) for u in update)
    if peak > CLIP:
        log.warning("update of %.3g exceeds the SecAgg+ range %.1f: clipped", peak, CLIP)
    res = FitRes(Status(Code.OK, ""), _params(update), n, metrics)
    return Message(compat.fitres_to_recorddict(res, keep_input=False), reply_to=msg)


def _params(arrays: list[np.ndarray]) -> Parameters:
    return ndarrays_to_parameters([np.clip(a, -CLIP, CLIP) for a in arrays])
