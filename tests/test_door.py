"""Door actions against a real local HTTP server and real subprocesses."""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edge_agent.door import IDEMPOTENCY_HEADER, DoorActions, DoorConfig, verify

SECRET = b"door-secret-for-tests-0123456789"


class Controller:
    """A door controller: fails the first ``fail`` requests, checks signatures, dedups."""

    def __init__(self, fail: int = 0, slow_first_s: float = 0.0) -> None:
        self.fail, self.slow_first_s = fail, slow_first_s
        self.requests, self.opens, self.bad_sig = 0, [], 0
        self.seen: set[str] = set()
        ctl = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ctl.requests += 1
                if ctl.requests <= ctl.fail:
                    self.send_response(503)
                    self.end_headers()
                    return
                if not verify(SECRET, self.headers, body):
                    ctl.bad_sig += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                key = self.headers[IDEMPOTENCY_HEADER]
                decision = json.loads(body)
                if key not in ctl.seen and decision["accepted"]:
                    ctl.seen.add(key)
                    ctl.opens.append(key)
                if ctl.requests == ctl.fail + 1 and ctl.slow_first_s:
                    time.sleep(ctl.slow_first_s)  # acted, but the reply comes too late
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/door"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def controller():
    made = []

    def make(**kw) -> Controller:
        made.append(Controller(**kw))
        return made[-1]

    yield make
    for c in made:
        c.close()


def _cfg(url: str, journal: Path, **kw) -> DoorConfig:
    kw.setdefault("backoff_s", 0.01)
    return DoorConfig(webhook_url=url, webhook_secret=SECRET, journal=journal, timeout_s=1.0, **kw)


def test_retries_then_opens_once(controller, tmp_path: Path) -> None:
    ctl = controller(fail=3)
    door = DoorActions(_cfg(ctl.url, tmp_path / "j.db"))
    door.fire({"attempt_id": "a1", "accepted": True})
    door.fire({"attempt_id": "a1", "accepted": True})  # the same attempt again: nothing
    assert ctl.requests == 4 and ctl.opens == ["a1"] and ctl.bad_sig == 0
    assert door.journal.state("a1", "webhook") == "done"


def test_restart_resumes_and_opens_exactly_once(controller, tmp_path: Path) -> None:
    ctl = controller(fail=4)
    journal = tmp_path / "j.db"
    first = DoorActions(_cfg(ctl.url, journal, retries=1))
    first.fire({"attempt_id": "a7", "accepted": True})  # 2 tries, both refused with 503
    assert ctl.opens == [] and first.journal.state("a7", "webhook") == "pending"
    first.close()  # the edge restarts
    second = DoorActions(_cfg(ctl.url, journal, retries=3))
    second.fire({"attempt_id": "a7", "accepted": True})  # a replayed decision: ignored
    assert ctl.requests == 2
    assert second.resume() == 1  # the pending delivery, same idempotency key
    assert second.resume() == 0
    third = DoorActions(_cfg(ctl.url, journal))
    assert third.resume() == 0
    assert ctl.opens == ["a7"] and ctl.requests == 5


def test_reply_lost_after_the_door_acted_still_opens_once(controller, tmp_path: Path) -> None:
    ctl = controller(slow_first_s=1.5)  # acts, then answers after the edge's 1 s time-out
    door = DoorActions(_cfg(ctl.url, tmp_path / "j.db"))
    door.fire({"attempt_id": "b2", "accepted": True})
    assert ctl.requests == 2 and ctl.opens == ["b2"]  # the retry carried the same key


def test_stale_pending_open_is_dropped_not_delivered(controller, tmp_path: Path) -> None:
    ctl = controller(fail=100)
    journal = tmp_path / "j.db"
    DoorActions(_cfg(ctl.url, journal, retries=0)).fire({"attempt_id": "c3", "accepted": True})
    ctl.fail = 0
    late = DoorActions(_cfg(ctl.url, journal, max_age_s=0.0))
    assert late.resume() == 0 and ctl.opens == []
    assert late.journal.state("c3", "webhook") == "expired"


def test_wrong_secret_is_refused_by_the_controller_and_not_retried(controller, tmp_path) -> None:
    ctl = controller()
    cfg = DoorConfig(webhook_url=ctl.url, webhook_secret=b"not the door's secret",
                     journal=tmp_path / "j.db", backoff_s=0.01)  # fmt: skip
    door = DoorActions(cfg)
    door.fire({"attempt_id": "d4", "accepted": True})
    assert ctl.bad_sig == 1 and ctl.requests == 1 and ctl.opens == []
    assert door.journal.state("d4", "webhook") == "refused 401"


def test_command_hook_gets_json_on_stdin_without_a_shell(tmp_path: Path) -> None:
    out = tmp_path / "seen.json"
    script = "import sys, pathlib; pathlib.Path(sys.argv[1]).write_bytes(sys.stdin.buffer.read())"
    # A shell would expand $(...) and ;: as an argv element it stays a literal file name.
    evil = tmp_path / "x; touch $(echo pwned)"
    cfg = DoorConfig(on_accept=(sys.executable, "-c", script, str(out)),
                     on_reject=(sys.executable, "-c", script, str(evil)))  # fmt: skip
    door = DoorActions(cfg)
    door.fire({"attempt_id": "e5", "accepted": True, "subject": "alice"})
    door.fire({"attempt_id": "e5", "accepted": True, "subject": "alice"})
    assert json.loads(out.read_text()) == {"attempt_id": "e5", "accepted": True, "subject": "alice"}
    door.fire({"attempt_id": "e6", "accepted": False})
    assert evil.exists() and not (tmp_path / "pwned").exists() and not Path("pwned").exists()
    assert door.journal.state("e5", "command") == "done"


def test_failing_or_hanging_command_is_logged_not_raised(tmp_path: Path) -> None:
    cfg = DoorConfig(on_accept=(sys.executable, "-c", "import time; time.sleep(5)"), timeout_s=0.3)
    door = DoorActions(cfg)
    door.fire({"attempt_id": "f1", "accepted": True})
    assert door.journal.state("f1", "command") == "failed: TimeoutExpired"
    missing = DoorActions(DoorConfig(on_accept=(str(tmp_path / "no-such-binary"),)))
    missing.fire({"attempt_id": "f2", "accepted": True})
    assert missing.journal.state("f2", "command") == "failed: FileNotFoundError"


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="secret"):
        DoorActions(DoorConfig(webhook_url="http://127.0.0.1:1/"))
    with pytest.raises(ValueError, match="http"):
        DoorActions(DoorConfig(webhook_url="file:///etc/passwd", webhook_secret=b"s"))
