"""Reports of liveness trials: one run's table (trial.json, trial.md) and several runs merged.

Terms are ISO/IEC 30107-3's: a "live" run is bona fide presentations, whose refusals are
the BPCER; any other presentation label (print, screen, replay, ...) is an attack type,
whose acceptances are that type's APCER. Rates carry a Wilson 95% interval.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import Counter
from pathlib import Path

Z95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval
BONA_FIDE = "live"
LABEL = re.compile(r"^[\w.+-]{1,40}$")  # fits a file name and a table cell


def check_label(value: str, flag: str) -> str:
    """Return ``value`` if it is a usable label (letters, digits, ``_.+-``), else raise."""
    if not LABEL.match(value):
        raise ValueError(f"{flag} must be 1-40 letters, digits or _.+- , got {value!r}")
    return value


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Return the Wilson score interval of ``k`` successes in ``n`` trials."""
    if n <= 0:
        return 0.0, 1.0
    p, zz = k / n, z * z
    centre = (p + zz / (2 * n)) / (1 + zz / n)
    half = z * math.sqrt(p * (1 - p) / n + zz / (4 * n * n)) / (1 + zz / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(trials: list[dict]) -> dict:
    """Count a run's trials: passed, rate and interval, failures by reason, median pass time."""
    n, k = len(trials), sum(t["outcome"] == "pass" for t in trials)
    lo, hi = wilson(k, n)
    times = [t["duration_s"] for t in trials if t["outcome"] == "pass"]
    failures = Counter(t["failure"] or "refused" for t in trials if t["outcome"] != "pass")
    return {
        "trials": n,
        "passed": k,
        "pass_rate": round(k / n, 4) if n else None,
        "wilson95": [round(lo, 6), round(hi, 6)],
        "failures": dict(failures.most_common()),
        "median_pass_s": round(statistics.median(times), 2) if times else None,
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def summary_table(s: dict) -> str:
    """The run's table and its failures by reason, as Markdown (also printed as is)."""
    lo, hi = s["wilson95"]
    median = "-" if s["median_pass_s"] is None else f"{s['median_pass_s']:.1f}"
    lines = [
        "| trials | passed | pass rate | Wilson 95% | median s per passing trial |",
        "|---|---|---|---|---|",
        f"| {s['trials']} | {s['passed']} | {_pct(s['pass_rate'])} | {_pct(lo)}-{_pct(hi)} "
        f"| {median} |",
        "",
    ]
    if s["failures"]:
        lines += ["| failure | trials |", "|---|---|"]
        lines += [f"| {why} | {n} |" for why, n in s["failures"].items()]
        lines.append("")
    return "\n".join(lines)


def _onsets(trial: dict) -> str:
    got = [s["onset_after_s"] for s in trial["steps"]]
    return ", ".join("-" if x is None else f"{x:.2f}" for x in got) or "-"


def write_report(out: Path, meta: dict, trials: list[dict]) -> dict:
    """Write ``trial.json`` and ``trial.md`` into ``out``; return the report."""
    out.mkdir(parents=True, exist_ok=True)
    report = {**meta, "summary": summarize(trials), "trials": trials}
    (out / "trial.json").write_text(json.dumps(report, indent=1) + "\n")
    cfg = meta["settings"]
    passive = f"--liveness {cfg['liveness']}"
    if cfg.get("passive_threshold") is not None:
        passive += f" (threshold {cfg['passive_threshold']:.3f})"
    md = [
        f"# Liveness trial: {meta['presentation']}",
        "",
        f"- started {meta['started_utc']} UTC; source `{meta['source']}`; "
        f"person {meta.get('person') or '-'}; ended: {meta['ended']}",
        f"- door settings: challenge {','.join(cfg['actions'])}, {cfg['steps']} steps, "
        f"{cfg['step_time_s']:g} s per step (limit {cfg['time_limit_s']:g} s); "
        f"{passive}; pause {cfg['pause_s']:g} s between trials",
        "",
        summary_table(report["summary"]),
        "| # | outcome | s | sequence | reaction onsets (s) | reason |",
        "|---|---|---|---|---|---|",
    ]
    for t in trials:
        md.append(f"| {t['index']} | {t['outcome']} | {t['duration_s']:.1f} | "
                  f"{','.join(t['sequence'])} | {_onsets(t)} | {t['reason']} |")  # fmt: skip
    (out / "trial.md").write_text("\n".join(md) + "\n")
    return report


def _load(path: Path) -> dict:
    file = path / "trial.json" if path.is_dir() else path
    try:
        report = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{file}: cannot read a trial report ({exc})") from exc
    if not (isinstance(report, dict) and isinstance(report.get("trials"), list)
            and {"presentation", "settings"} <= report.keys()):  # fmt: skip
        raise ValueError(f"{file}: not a liveness trial report (kfaar edge liveness-trial)")
    report["_file"] = str(file)
    return report


def _settings(report: dict) -> str:
    s = report["settings"]
    return (f"{','.join(s['actions'])} x{s['steps']} {s['step_time_s']:g}s, "
            f"passive {s['liveness']}")  # fmt: skip


def merge(paths: list[Path]) -> dict:
    """Merge trial reports (folders or trial.json files) into counts per presentation type."""
    if not paths:
        raise ValueError("--summarize needs at least one trial folder or trial.json")
    reports = [_load(Path(p)) for p in paths]
    rows: dict[str, dict] = {}
    for r in reports:
        row = rows.setdefault(r["presentation"], {"runs": 0, "people": set(), "trials": 0,
                                                  "accepted": 0, "failures": Counter(),
                                                  "settings": set()})  # fmt: skip
        row["runs"] += 1
        if r.get("person"):
            row["people"].add(r["person"])
        row["settings"].add(_settings(r))
        for t in r["trials"]:
            row["trials"] += 1
            row["accepted"] += t["outcome"] == "pass"
            if t["outcome"] != "pass":
                row["failures"][t["failure"] or "refused"] += 1
    out = {}
    for label, row in sorted(rows.items(), key=lambda kv: (kv[0] != BONA_FIDE, kv[0])):
        n, acc = row["trials"], row["accepted"]
        errors = n - acc if label == BONA_FIDE else acc
        lo, hi = wilson(errors, n)
        out[label] = {
            "metric": "BPCER" if label == BONA_FIDE else "APCER",
            "runs": row["runs"],
            "people": len(row["people"]),  # distinct --person labels (0: none given)
            "trials": n,
            "accepted": acc,
            "refused": n - acc,
            "errors": errors,
            "rate": round(errors / n, 4) if n else None,
            "wilson95": [round(lo, 6), round(hi, 6)],
            "failures": dict(row["failures"].most_common()),
            "settings": sorted(row["settings"]),
        }
    return {"files": [r["_file"] for r in reports], "presentations": out}


def merge_table(merged: dict) -> str:
    """The merged counts as Markdown: one row per presentation type, then their failures."""
    lines = [
        "| presentation | metric | runs | people | trials | accepted as live | refused "
        "| rate | Wilson 95% |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = merged["presentations"]
    for label, r in rows.items():
        lo, hi = r["wilson95"]
        lines.append(
            f"| {label} | {r['metric']} | {r['runs']} | {r['people'] or '-'} | {r['trials']} "
            f"| {r['accepted']} | {r['refused']} | {r['errors']}/{r['trials']} = "
            f"{_pct(r['rate'])} | {_pct(lo)}-{_pct(hi)} |"
        )
    settings = {s for r in rows.values() for s in r["settings"]}
    lines.append("")
    if len(settings) > 1:
        lines += [f"Warning: the runs used different door settings: {'; '.join(sorted(settings))}",
                  ""]  # fmt: skip
    for label, r in rows.items():
        if r["failures"]:
            why = "; ".join(f"{reason}: {n}" for reason, n in r["failures"].items())
            lines.append(f"{label}, refused by reason: {why}")
    return "\n".join(lines) + "\n"
