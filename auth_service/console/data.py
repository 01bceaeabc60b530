"""Read-only queries over the store for the console's listings (SQLite or PostgreSQL).

AdminService has no listing RPCs, so the console reads these tables directly; every write
goes through AdminService (auth_service/console/backend.py). Pages are keyset-paginated:
each query reads one page (``LIMIT``), never a whole table. The SQL is written once;
sql.py gives it a read-only connection and the spellings that differ per database.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auth_service.authz import DEFAULT_SCOPE
from auth_service.console.sql import Source, SqliteSource
from auth_service.ratelimit import GuessBudgets

PAGE = 50
SEP = "\x1f"  # joins scope and subject id in the store (auth_service/authz.py)
DECISION_METHODS = ("Verify", "Identify")


@dataclass(frozen=True)
class AuditFilter:
    """What the decision and audit pages filter on; empty fields filter nothing."""

    door: str = ""
    subject: str = ""
    operator: str = ""
    method: str = ""
    outcome: str = ""  # accepted, refused or empty
    since: float | None = None
    until: float | None = None
    before: int | None = None  # keyset: rows with a smaller id


def accepted(method: str, outcome: str) -> bool | None:
    """Return whether a decision row accepted (None: not a decision)."""
    if outcome.startswith("refused"):
        return False
    if method == "Verify":
        return outcome == "accept"
    if method == "Identify":
        return not outcome.startswith("0 ")
    return None


def stored_subject(shown: str) -> str:
    """Turn ``scope/subject`` as the audit shows it into the templates table's key."""
    scope, sep, rest = shown.partition("/")
    if not sep or scope == DEFAULT_SCOPE:
        return rest if sep and scope == DEFAULT_SCOPE else shown
    return f"{scope}{SEP}{rest}"


class Reader:
    """Queries for one store; a read-only connection per call (thread-safe)."""

    def __init__(self, db: Path | Source) -> None:
        self.source: Source = SqliteSource(db) if isinstance(db, (str, Path)) else db
        # When each door was last seen, kept up to date by reading only the audit rows
        # added since the last look (the audit log is append-only): no full scan per page.
        self._seen: dict[str, float] = {}
        self._seen_upto = 0
        self._seen_lock = threading.Lock()
        self._has_shared = False  # app_tokens.shared exists (checked until it does)

    def _db(self) -> contextlib.AbstractContextManager[Any]:
        return self.source.connect()

    def close(self) -> None:
        """Close the source's connections (a PostgreSQL pool)."""
        self.source.close()

    def _scope_sql(self) -> str:
        """Return SQL for the scope of a stored subject key."""
        at = self.source.instr("subject_id")
        return f"CASE WHEN {at} > 0 THEN substr(subject_id, 1, {at} - 1) ELSE 'default' END"

    def scopes(self) -> list[tuple[str, int, int]]:
        """Return (scope, devices, tokens) for every scope with a device or token."""
        with self._db() as db:
            d = dict(db.execute("SELECT scope, COUNT(*) FROM devices GROUP BY scope"))
            t = dict(db.execute("SELECT scope, COUNT(*) FROM app_tokens GROUP BY scope"))
        return [(s, d.get(s, 0), t.get(s, 0)) for s in sorted(set(d) | set(t))]

    def devices(self, scope: str | None) -> list[dict]:
        """Return the registered devices (of one scope), with when each was last seen."""
        sql = "SELECT device_id, scope, created, verify_key FROM devices"
        args: tuple = ()
        if scope is not None:
            sql, args = sql + " WHERE scope = ?", (scope,)
        with self._db() as db:
            rows = db.execute(sql + " ORDER BY scope, device_id LIMIT 1000", args).fetchall()
            seen = self._last_seen(db, [r[0] for r in rows])
        return [
            {"id": d, "scope": s, "created": c, "key": bytes(k).hex()[:16], "seen": seen.get(d)}
            for d, s, c, k in rows
        ]

    def _last_seen(self, db: Any, ids: list[str]) -> dict[str, float]:
        with self._seen_lock:
            top = db.execute("SELECT MAX(id) FROM audit").fetchone()[0] or 0
            if top > self._seen_upto:
                for dev, at in db.execute(
                    "SELECT device_id, MAX(at) FROM audit WHERE id > ? AND id <= ? "
                    "AND device_id IS NOT NULL GROUP BY device_id",
                    (self._seen_upto, top),
                ):
                    self._seen[dev] = max(at, self._seen.get(dev, at))
                self._seen_upto = top
            return {d: self._seen[d] for d in ids if d in self._seen}

    def unregistered(self, limit: int = 20) -> list[tuple[float, str, str]]:
        """Return recent UnregisterDevice rows (when, who, device) of devices still gone."""
        with self._db() as db:
            rows = db.execute(
                "SELECT at, device_id, outcome FROM audit WHERE method = 'UnregisterDevice' "
                "AND outcome NOT IN (SELECT device_id FROM devices) ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [(at, who or "admin", dev) for at, who, dev in rows]

    def tokens(self, scope: str | None) -> list[dict]:
        """Return the app tokens' grants (never their hashes)."""
        with self._db() as db:
            # Stores from before shared tokens lack the column; once seen, it stays (a
            # catalogue query per page costs PostgreSQL a few ms).
            if not self._has_shared:
                self._has_shared = "shared" in self.source.columns(db, "app_tokens")
            shared = "shared" if self._has_shared else "0"
            sql = f"SELECT app_name, scope, devices, methods, created, {shared} FROM app_tokens"
            args: tuple = ()
            if scope is not None:
                sql, args = sql + " WHERE scope = ?", (scope,)
            rows = db.execute(sql + " ORDER BY scope, app_name LIMIT 1000", args).fetchall()
        return [
            {
                "app": a,
                "scope": s,
                "devices": [d for d in devs.split("\n") if d],
                "methods": [m for m in meths.split(",") if m],
                "created": c,
                "shared": bool(sh),
            }
            for a, s, devs, meths, c, sh in rows
        ]

    def token_scope(self, app: str) -> str | None:
        with self._db() as db:
            row = db.execute("SELECT scope FROM app_tokens WHERE app_name = ?", (app,)).fetchone()
        return None if row is None else row[0]

    def device_scope(self, device: str) -> str | None:
        with self._db() as db:
            row = db.execute("SELECT scope FROM devices WHERE device_id = ?", (device,)).fetchone()
        return None if row is None else row[0]

    def subjects(self, scope: str | None, after: str = "", prefix: str = "") -> list[dict]:
        """Return one page of subjects: template count, models, enrolled, last matched."""
        key = f"subject_id{self.source.binary}"  # byte order: a scope's keys sort together
        where, args = [f"{key} > ?"], [after]
        if scope == DEFAULT_SCOPE:
            where.append(f"{self.source.instr('subject_id')} = 0")
        elif scope is not None:  # the scope's keys sort together: an index range
            where += [f"{key} >= ?", f"{key} < ?"]
            args += [f"{scope}{SEP}", f"{scope}\x20"]
        if prefix:
            low = prefix if scope in (None, DEFAULT_SCOPE) else f"{scope}{SEP}{prefix}"
            where += [f"{key} >= ?", f"{key} < ?"]
            args += [low, low + "\U0010ffff"]
        sql = (
            f"SELECT subject_id, COUNT(*), {self.source.distinct_list('model')}, MIN(created) "
            f"FROM templates WHERE {' AND '.join(where)} GROUP BY subject_id "
            f"ORDER BY {key} LIMIT ?"
        )
        with self._db() as db:
            rows = db.execute(sql, (*args, PAGE + 1)).fetchall()
            shown = [k.replace(SEP, "/") for k, *_ in rows]
            marks = ", ".join("?" * len(shown))
            matched = (  # no query for an empty page: PostgreSQL refuses ``IN ()``
                dict(
                    db.execute(
                        "SELECT subject_id, MAX(at) FROM audit WHERE method = 'Verify' AND "
                        f"outcome = 'accept' AND subject_id IN ({marks}) GROUP BY subject_id",
                        shown,
                    )
                )
                if shown
                else {}
            )
        out = []
        for (key, n, models, enrolled), s in zip(rows, shown, strict=True):
            scope_of, _, sid = key.rpartition(SEP)
            out.append(
                {
                    "key": key,
                    "id": sid,
                    "scope": scope_of or DEFAULT_SCOPE,
                    "templates": n,
                    "models": sorted(set((models or "").split(","))),
                    "enrolled": enrolled,
                    "matched": matched.get(s),
                }
            )
        return out

    def counts(self) -> dict[str, int]:
        """Return totals for the overview."""
        with self._db() as db:
            one = lambda sql: db.execute(sql).fetchone()[0]  # noqa: E731
            return {
                "devices": one("SELECT COUNT(*) FROM devices"),
                "tokens": one("SELECT COUNT(*) FROM app_tokens"),
                "subjects": one(
                    "SELECT COUNT(*) FROM (SELECT DISTINCT subject_id FROM templates) AS s"
                ),
                "audit": one("SELECT MAX(id) FROM audit") or 0,
            }

    def models(self, scope: str | None) -> list[tuple[str, str, int, int, int]]:
        """Return (scope, model, space, subjects, templates) per site and model version."""
        sql = (
            f"SELECT {self._scope_sql()} AS site, model, space, "
            "COUNT(DISTINCT subject_id), COUNT(*) FROM templates "
            "GROUP BY site, model, space ORDER BY site, model, space"
        )
        with self._db() as db:
            rows = db.execute(sql).fetchall()
        return [r for r in rows if scope is None or r[0] == scope]

    def audit(self, f: AuditFilter, scope: str | None, decisions: bool = False) -> list[dict]:
        """Return one page of audit rows, newest first, matching ``f``."""
        where: list[str] = []
        args: list = []
        if decisions:
            where.append("(method IN ('Verify', 'Identify') OR outcome LIKE 'refused:%')")
        for col, val in (("device_id", f.door), ("method", f.method)):
            if val:
                where.append(f"{col} = ?")
                args.append(val)
        if f.operator:
            where.append("device_id = ?")
            args.append(f"operator:{f.operator}")
        if f.subject:
            where.append("subject_id = ?")
            args.append(f.subject)
        if f.outcome == "accepted":
            where.append("(outcome = 'accept' OR (method = 'Identify' AND outcome NOT LIKE '0 %'))")
        elif f.outcome == "refused":
            where.append("(outcome IN ('reject', '0 candidates') OR outcome LIKE 'refused:%')")
        if f.since is not None:
            where.append("at >= ?")
            args.append(f.since)
        if f.until is not None:
            where.append("at < ?")
            args.append(f.until)
        if f.before is not None:
            where.append("id < ?")
            args.append(f.before)
        if scope is not None:  # the rows of the scope's devices, and subjects in its key form
            where.append(
                "(device_id IN (SELECT device_id FROM devices WHERE scope = ?) "
                "OR subject_id LIKE ? ESCAPE '\\')"
            )
            args += [scope, scope.replace("_", "\\_") + "/%"]
        sql = "SELECT id, at, device_id, method, subject_id, outcome FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._db() as db:
            rows = db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, PAGE + 1)).fetchall()
        return [
            {
                "id": i,
                "at": at,
                "who": dev or "",
                "method": m,
                "subject": subj or "",
                "outcome": out,
                "accepted": accepted(m, out),
            }
            for i, at, dev, m, subj, out in rows
        ]

    def lockouts(
        self, budgets: GuessBudgets, now: float | None = None, limit: int | None = None
    ) -> list[dict]:
        """Return the guess budgets that refuse calls right now, longest wait first."""
        now = time.time() if now is None else now
        least = min(b.burst for b in (budgets.device, budgets.token, budgets.subject, budgets.pair))
        with self._db() as db:
            rows = db.execute(
                "SELECT budget_key, level, at FROM guess_budgets WHERE level >= ? "
                "AND budget_key NOT LIKE 'proven%'",
                (least - 1,),
            ).fetchall()
            scopes = dict(db.execute("SELECT device_id, scope FROM devices"))
            tscopes = dict(db.execute("SELECT app_name, scope FROM app_tokens"))
        out = []
        for key, level, at in rows:
            kind, *ids = key.split(SEP)
            budget = getattr(budgets, kind, None)
            if budget is None:
                continue
            wait = budget.wait(budget.level((level, at), now))
            if wait <= 0:
                continue
            if kind == "device":
                scope, what = scopes.get(ids[0], "?"), f"device {ids[0]}"
            elif kind == "token":
                scope, what = tscopes.get(ids[0], "?"), f"app {ids[0]}"
            else:  # subject and pair keys hold the subject's stored key (scope first)
                scope = ids[0] if len(ids) > 2 or (kind == "subject" and len(ids) == 2) else None
                scope = scope or DEFAULT_SCOPE
                subj = "/".join(ids[:-1] if kind == "pair" else ids)
                what = f"subject {subj}" + (f" from device {ids[-1]}" if kind == "pair" else "")
            out.append(
                {"key": key, "kind": kind, "what": what, "scope": scope, "wait": wait, "at": at}
            )
        return sorted(out, key=lambda r: -r["wait"])[:limit]
