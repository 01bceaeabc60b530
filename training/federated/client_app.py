"""ClientApp: a site fine-tunes the federated weights on its own faces and returns them.

The site's data is an LFW-style folder named by the SuperNode's ``--node-config
data-path="..."``. Images never leave the site: only the trainable weights, the number
of local examples and the local losses travel back. With ``dp = true`` the update is
clipped and noised on the site by Flower's ``LocalDpMod`` before it is sent; with
``secagg = true`` it is masked by SecAgg+ so the server sees only the sum (secure.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import LocalDpMod

from training.federated import secure, task

log = logging.getLogger(__name__)

app = ClientApp()

_cache: dict[str, object] = {}  # the ClientApp process may serve several rounds


def _site(context: Context) -> tuple[task.Models, object]:
    data_path = context.node_config.get("data-path")
    if not data_path:
        raise ValueError('start the SuperNode with --node-config data-path="<site folder>"')
    bundle = str(context.run_config.get("start-bundle", "")) or str(task.default_bundle())
    key = f"{bundle}|{data_path}"
    if key not in _cache:
        _cache[key] = (task.load_models(bundle), task.site_chips(Path(str(data_path))))
    return _cache[key]  # type: ignore[return-value]


def _local_config(context: Context, config: dict) -> task.LocalConfig:
    rc = context.run_config
    return task.LocalConfig(
        steps=int(rc["local-steps"]),
        kvfa_steps=int(rc["local-kvfa-steps"]),
        batch=int(rc["batch"]),
        lr=float(rc["lr"]),
        kvfa_lr=float(rc["kvfa-lr"]),
        proximal_mu=float(config.get("proximal-mu", 0.0)),
        # Each site and round draws its own triplets and augmentations.
        seed=int(rc["seed"]) + 1000 * int(config.get("server-round", 0)) + context.node_id % 997,
    )


def _fit(context: Context, state: dict, config: dict) -> tuple[dict, int, dict]:
    """Fine-tune from ``state`` on this site's chips; return new weights, examples, losses."""
    models, chips = _site(context)
    base = str(config.get("base-digest", ""))
    bundle = str(context.run_config.get("start-bundle", "")) or str(task.default_bundle())
    if base and base != task.bundle_digest(Path(bundle)):
        raise ValueError("this site's base model differs from the server's; update kfaar")
    task.load_trainable(models, state)
    losses = task.fit_local(models, chips, _local_config(context, config))
    trained = task.trainable_state(models)
    n = len(chips)
    record = str(context.run_config.get("record-dir", ""))
    if record:  # debug: keep what this site trained, to recompute the aggregate in tests
        out = Path(record) / f"round{int(config.get('server-round', 0))}-node{context.node_id}.npz"
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out, num_examples=n, **{k: v.numpy() for k, v in trained.items()})
    return trained, n, losses


def _train(msg: Message, context: Context) -> Message:
    config = dict(msg.content["config"]) if "config" in msg.content else {}
    trained, n, losses = _fit(context, msg.content["arrays"].to_torch_state_dict(), config)
    metrics = MetricRecord({"num-examples": n, **losses})
    content = RecordDict({"arrays": ArrayRecord(trained), "metrics": metrics})
    return Message(content=content, reply_to=msg)


def _train_secagg(msg: Message, context: Context) -> Message:
    names = list(task.trainable_state(_site(context)[0]))
    return secure.site_round(msg, names, lambda state, config: _fit(context, state, config))


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Fine-tune on local data; with ``secagg``, mask the update; with ``dp``, noise it."""
    rc = context.run_config
    if rc.get("secagg", False):
        return secaggplus_mod(msg, context, _train_secagg)
    if not rc.get("dp", False):
        return _train(msg, context)
    clip = float(rc["dp-clip"])
    mod = LocalDpMod(clip, clip, float(rc["dp-epsilon"]), float(rc["dp-delta"]))
    reply = mod(msg, context, _train)
    if not reply.has_error():
        # Gaussian mechanism per round; over R rounds basic composition gives (R eps, R delta).
        reply.content["metrics"]["dp-epsilon"] = float(rc["dp-epsilon"])
        reply.content["metrics"]["dp-delta"] = float(rc["dp-delta"])
    return reply
