"""A door controller on loopback that opens only on the service's access grant, and helpers.

The controller checks each webhook's HMAC, then the grant with the standalone
deploy/door_controller/verify_grant.py, loaded from its file as a controller would run it.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from authz_kit import Client, Site, emb, unit

from auth_service.access_grant import PREFIX
from edge_agent.client import AuthClient, ClientConfig
from edge_agent.door import DoorActions, DoorConfig, verify
from kfaar_pb.v1 import auth_pb2

REPO = Path(__file__).resolve().parent.parent
VERIFIER = REPO / "deploy" / "door_controller" / "verify_grant.py"
SECRET = b"door-secret-for-tests-0123456789"


def _load_verifier():
    spec = importlib.util.spec_from_file_location("verify_grant", VERIFIER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


vg = _load_verifier()


class Controller:
    """A door controller on loopback: HMAC first, then the service's grant; opens once."""

    def __init__(self, verify_key: bytes, device: str, clock=time.time, need_grant=True) -> None:
        self.opens: list[dict] = []
        self.refusals: list[str] = []
        self.seen: dict[str, int] = {}
        lock, ctl = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if not verify(SECRET, self.headers, body):
                    return self._answer(401, "bad webhook signature")
                decision = json.loads(body)
                with lock:
                    try:
                        if need_grant:
                            claims = vg.verify_grant(
                                decision.get("grant"), verify_key, device, clock(), ctl.seen
                            )
                        else:  # the old way: the camera's signed word is enough
                            claims = decision if decision.get("accepted") else None
                    except vg.GrantRefused as exc:
                        return self._answer(403, str(exc))
                    if claims is not None:
                        ctl.opens.append(claims)
                self._answer(204, "")

            def _answer(self, status: int, why: str) -> None:
                if why:
                    ctl.refusals.append(why)
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/door"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def grant_key(site: Site) -> bytes:
    return site.running.store.service_key.grant_verify_key


def edge_client(site: Site, cam: Client) -> AuthClient:
    """The edge agent's own client for a registered device (signing, idempotency keys)."""
    cfg = ClientConfig(f"127.0.0.1:{site.running.port}", cam.token, cam.device, attempts=1)
    return AuthClient(cfg, cam.key)


def door(url: str, journal: Path) -> DoorActions:
    cfg = DoorConfig(webhook_url=url, webhook_secret=SECRET, journal=journal, retries=0)
    return DoorActions(cfg)


def decide(client: AuthClient, subject: str, seed: int) -> tuple[auth_pb2.VerifyReply, dict]:
    """Verify like `kfaar edge run` does; return the reply and the decision the door gets."""
    req = auth_pb2.VerifyRequest(subject_id=subject, probe=emb(unit(seed)))
    reply = client.call("Verify", req)
    decision = {"attempt_id": req.idempotency_key, "accepted": reply.match, "claim": subject,
                "device": client.cfg.device_id}  # fmt: skip
    if reply.access_grant:
        decision["grant"] = base64.b64encode(reply.access_grant).decode()
    return reply, decision


def claims_of(grant: bytes) -> dict:
    body = grant[64:]
    assert body.startswith(PREFIX)
    return json.loads(body[len(PREFIX) :])
