"""Markdown sections of the evaluation report: every judge, realism, no real person inside."""

from __future__ import annotations

JUDGE_ROWS = (
    "threshold",
    "judge_auc_original",
    "anonymity",
    "diversity",
    "differentiation",
    "synchronism_auc",
    "synchronism_eer",
)


def _num(v: object) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def judges_section(judges: dict) -> list[str]:
    """Return a table with one column per judge."""
    names = list(judges)
    lines = [
        "## Every judge",
        "",
        "Each judge decides at its own EER threshold on the original pairs.",
        "",
        "| metric | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for row in JUDGE_ROWS:
        lines.append(f"| {row} | " + " | ".join(_num(judges[n].get(row)) for n in names) + " |")
    return [*lines, ""]


def realism_section(results: dict) -> list[str]:
    """Return the real-versus-virtual classifier's AUCs and the MesoNet scores."""
    lines = [
        "## Realism",
        "",
        f"A classifier tells {results.get('realism_n')} originals from one virtual face of "
        "each (5-fold cross-validation grouped by identity; out-of-fold AUC, 0.5 = cannot "
        "tell). Highest: "
        f"**{_num(results['realism_auc'])}**.",
        "",
        "| model / features | AUC |",
        "|---|---|",
    ]
    lines += [f"| {k} | {_num(v)} |" for k, v in results.get("realism_auc_detail", {}).items()]
    lines.append("")
    meso = results.get("mesonet")
    if meso is None:
        if "mesonet_note" in results:
            lines += [f"MesoNet: {results['mesonet_note']}", ""]
        return lines
    lines += [
        "MesoNet detectors (evaluation only): mean fake score, share above 0.5 in brackets.",
        "",
        "| detector | originals | virtual faces |",
        "|---|---|---|",
    ]
    for name, o in meso["original"].items():
        v = meso["virtual"][name]
        lines.append(
            f"| {name} | {o['mean_fake']:.3f} ({o['share_fake']:.0%}) | "
            f"{v['mean_fake']:.3f} ({v['share_fake']:.0%}) |"
        )
    return [*lines, ""]


def real_person_section(results: dict) -> list[str]:
    """Return the share of faces whose nearest training identity is judged the same person."""
    lines = [
        "## No real person inside",
        "",
        f"Gallery: means of {results.get('gallery_identities')} training-side identities. "
        "Share of faces whose nearest identity passes the judge's fixed same-person rule; "
        "on the originals (people not in the gallery) it is the gallery's false-match floor. "
        "Nearest AUC: how often a virtual face is nearer to a training identity than an "
        "original is (0.5: no nearer than unseen real people); last column: share of virtual "
        "faces nearer than the originals' 99th percentile.",
        "",
        "| judge | rule | virtual faces | originals | nearest AUC | virtual > originals' p99 |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results["real_person_match"].items():
        lines.append(
            f"| {name} | {r['threshold']} | {r['virtual']:.4f} (of {r['n_virtual']}) | "
            f"{r['original']:.4f} | {r['nearest_auc']:.3f} | "
            f"{r['virtual_above_original_p99']:.4f} |"
        )
    return [*lines, ""]


def sections(results: dict) -> list[str]:
    """Return every extra section that applies to ``results``."""
    out: list[str] = []
    if len(results.get("judges", {})) > 1:
        out += judges_section(results["judges"])
    if "realism_auc" in results:
        out += realism_section(results)
    if "real_person_match" in results:
        out += real_person_section(results)
    return out
