"""Biometric metrics on similarity scores: ROC, AUC, EER, thresholds and cross-validated accuracy.

Scores are similarities: higher means "more likely the same identity". A pair is accepted
when its score is at least the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Roc:
    """False-accept and true-accept rates at every distinct threshold, descending."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


def _check(genuine: np.ndarray, impostor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    g = np.asarray(genuine, dtype=np.float64).ravel()
    i = np.asarray(impostor, dtype=np.float64).ravel()
    if len(g) == 0 or len(i) == 0:
        raise ValueError("need at least one genuine and one impostor score")
    if not (np.isfinite(g).all() and np.isfinite(i).all()):
        raise ValueError("scores contain NaN or infinity")
    return g, i


def roc(genuine: np.ndarray, impostor: np.ndarray) -> Roc:
    """Return the ROC of accepting pairs whose score is at least each threshold."""
    g, i = _check(genuine, impostor)
    thresholds = np.unique(np.concatenate([g, i]))[::-1]
    # Count scores >= t with one sorted search per side.
    tpr = 1.0 - np.searchsorted(np.sort(g), thresholds, side="left") / len(g)
    fpr = 1.0 - np.searchsorted(np.sort(i), thresholds, side="left") / len(i)
    return Roc(np.r_[0.0, fpr], np.r_[0.0, tpr], np.r_[np.inf, thresholds])


def auc(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """Return the probability that a genuine pair outscores an impostor pair (ties count half)."""
    g, i = _check(genuine, impostor)
    # Mann-Whitney U with tied scores sharing their average rank.
    allv = np.concatenate([g, i])
    order = np.argsort(allv, kind="mergesort")
    sorted_v = allv[order]
    ranks = np.empty(len(allv))
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_v)) + 1]
    ends = np.r_[starts[1:], len(sorted_v)]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e - 1) / 2.0
    u = ranks[: len(g)].sum() - len(g) * (len(g) - 1) / 2.0
    return float(u / (len(g) * len(i)))


def eer(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """Return the equal error rate and the threshold where false accepts meet false rejects."""
    curve = roc(genuine, impostor)
    fnr = 1.0 - curve.tpr
    k = int(np.argmin(np.abs(fnr - curve.fpr)))
    # Interpolate between the neighbouring operating points for a stable estimate.
    rate = float((fnr[k] + curve.fpr[k]) / 2.0)
    thr = curve.thresholds[k]
    if not np.isfinite(thr):
        thr = curve.thresholds[1]
    return rate, float(thr)


def threshold_at_far(impostor: np.ndarray, far: float) -> float:
    """Return the lowest threshold whose false-accept rate on ``impostor`` is at most ``far``."""
    i = np.sort(np.asarray(impostor, dtype=np.float64).ravel())
    if len(i) == 0:
        raise ValueError("need impostor scores")
    allowed = int(np.floor(far * len(i)))  # impostors that may score >= threshold
    if allowed >= len(i):
        return float(i[0])
    # Just above the (allowed+1)-th highest impostor score.
    return float(np.nextafter(i[len(i) - allowed - 1], np.inf))


def accept_rate(scores: np.ndarray, threshold: float) -> float:
    """Return the fraction of scores at or above the threshold."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    if len(s) == 0:
        raise ValueError("no scores")
    return float((s >= threshold).mean())


def best_accuracy_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """Return the threshold that maximises verification accuracy on these pairs."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(same, dtype=bool)
    candidates = np.unique(s)
    mids = np.r_[candidates[0] - 1e-9, (candidates[:-1] + candidates[1:]) / 2, candidates[-1]]
    acc = [((s >= t) == y).mean() for t in mids]
    return float(mids[int(np.argmax(acc))])


def cross_validated_accuracy(
    scores: np.ndarray, same: np.ndarray, folds: int = 10
) -> tuple[float, float]:
    """Return mean and standard deviation of accuracy, thresholds chosen on the other folds."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(same, dtype=bool)
    if len(s) != len(y) or len(s) < folds:
        raise ValueError("need at least one pair per fold and matching labels")
    parts = np.array_split(np.arange(len(s)), folds)
    accs = []
    for k, test in enumerate(parts):
        train = np.concatenate([p for j, p in enumerate(parts) if j != k])
        t = best_accuracy_threshold(s[train], y[train])
        accs.append(((s[test] >= t) == y[test]).mean())
    return float(np.mean(accs)), float(np.std(accs))
