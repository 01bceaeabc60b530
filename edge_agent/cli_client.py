"""The keystore and service client that every ``kfaar edge`` action builds from its flags."""

from __future__ import annotations

import argparse
import atexit
import os

from edge_agent.keys_cli import default_keystore, open_keystore


def cli_keystore(args: argparse.Namespace):
    """Open the keystore named by --keystore / --device-secret (or their env vars)."""
    return open_keystore(args)


def cli_client(args: argparse.Namespace, keys):
    """Connect to the service with this device's signing key and durable outbox."""
    from edge_agent.client import AuthClient, ClientConfig, Outbox  # grpc only when sending

    token = os.environ.get("KFAAR_APP_TOKEN")
    if not token:
        raise ValueError("set $KFAAR_APP_TOKEN to this deployment's app token")
    cfg = ClientConfig(args.server, token, args.device_id, args.ca, args.cert, args.key)
    outbox = Outbox(args.outbox or default_keystore().with_name("outbox.db"))
    client = AuthClient(cfg, keys.signing_key(), outbox)
    atexit.register(client.close)
    if args.action == "run":  # a long run delivers queued writes while it authenticates
        client.start_delivery()
    return client
