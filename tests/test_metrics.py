"""Metric functions against brute-force definitions and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluation import metrics


def brute_auc(g: np.ndarray, i: np.ndarray) -> float:
    return float(np.mean([(a > b) + 0.5 * (a == b) for a in g for b in i]))


@pytest.mark.parametrize("seed", range(4))
def test_auc_equals_the_pairwise_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    g = rng.normal(1.0, 1.0, 60).round(1)  # rounding makes ties
    i = rng.normal(0.0, 1.0, 45).round(1)
    assert metrics.auc(g, i) == pytest.approx(brute_auc(g, i))


def test_perfect_and_inverted_separation() -> None:
    assert metrics.auc([2, 3], [0, 1]) == 1.0
    assert metrics.auc([0, 1], [2, 3]) == 0.0
    assert metrics.eer([2, 3], [0, 1])[0] == 0.0


def test_eer_of_overlapping_uniforms() -> None:
    g = np.linspace(0.5, 1.5, 1001)
    i = np.linspace(0.0, 1.0, 1001)
    rate, thr = metrics.eer(g, i)
    assert rate == pytest.approx(0.25, abs=0.002)
    assert thr == pytest.approx(0.75, abs=0.002)


def test_threshold_at_far_admits_at_most_that_share() -> None:
    rng = np.random.default_rng(5)
    imp = rng.normal(size=10_000)
    for far in (0.0, 1e-3, 0.01, 0.2):
        t = metrics.threshold_at_far(imp, far)
        assert metrics.accept_rate(imp, t) <= far
        # and it is the lowest such threshold: one step down admits one more impostor
        assert metrics.accept_rate(imp, np.nextafter(t, -np.inf) - 1e-12) > far or far == 0.0


def test_cross_validated_accuracy_on_separable_data() -> None:
    s = np.r_[np.linspace(1, 2, 50), np.linspace(-2, -1, 50)]
    same = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    order = np.random.default_rng(0).permutation(100)
    mean, std = metrics.cross_validated_accuracy(s[order], same[order])
    assert mean == 1.0 and std == 0.0


def test_bad_scores_raise() -> None:
    with pytest.raises(ValueError):
        metrics.auc([], [1.0])
    with pytest.raises(ValueError):
        metrics.eer([np.nan], [1.0])
    with pytest.raises(ValueError):
        metrics.accept_rate([], 0.5)
