"""Real-versus-virtual classification: how easily cheap features tell virtual faces apart.

A classifier is trained and cross-validated (5 folds, grouped by identity, so that no
person is in both the training and the test part) on originals against virtual faces.
Its out-of-fold AUC is the measure: 0.5 means the features cannot tell them apart, 1.0
means every virtual face gives itself away. Features are computed on the face chip that
the anonymizer replaces (dlib's 150 px geometry): colour statistics inside the face and
against its surroundings (seams, tint), local binary pattern histograms (texture), the
radial power spectrum (missing or excess fine detail), Laplacian energy at the rim of the
pasted region, and the system recognizer's embedding.
"""

from __future__ import annotations

import itertools
import logging

import cv2
import numpy as np

from edge_agent.face.align import DLIB_150, align, soft_mask

log = logging.getLogger(__name__)

FOLDS = 5
_MASK = soft_mask(DLIB_150.size)
_INNER = _MASK > 0.9
_RING = (_MASK > 0.05) & (_MASK < 0.6)
_OUTER = _MASK < 0.01
_TOP = np.zeros_like(_INNER)
_TOP[: DLIB_150.size // 2] = True

# Rotation-invariant uniform LBP: codes with at most two 0/1 transitions map to their
# count of ones (0..8), all others to 9.
_CODES = np.arange(256)
_BITS = (_CODES[:, None] >> np.arange(8)) & 1
_TRANSITIONS = (np.roll(_BITS, 1, axis=1) != _BITS).sum(1)
LBP_MAP = np.where(_TRANSITIONS <= 2, _BITS.sum(1), 9).astype(np.int64)
SPECTRUM_BANDS = 10


def lbp_codes(gray: np.ndarray) -> np.ndarray:
    """Return rotation-invariant uniform LBP codes (0..9) of the 3x3 neighbourhoods."""
    g = gray.astype(np.int16)
    c = g[1:-1, 1:-1]
    shifts = [(0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0)]
    code = np.zeros(c.shape, np.int64)
    for bit, (dy, dx) in enumerate(shifts):
        code |= (g[dy : dy + c.shape[0], dx : dx + c.shape[1]] >= c).astype(np.int64) << bit
    out = np.full(gray.shape, 9, np.int64)
    out[1:-1, 1:-1] = LBP_MAP[code]
    return out


def radial_spectrum(gray: np.ndarray, bands: int = SPECTRUM_BANDS) -> np.ndarray:
    """Return the log share of spectral power in ``bands`` rings from low to high frequency."""
    n = gray.shape[0]
    window = np.outer(np.hanning(n), np.hanning(n))
    g = gray.astype(np.float64)
    power = np.abs(np.fft.fftshift(np.fft.fft2((g - g.mean()) * window))) ** 2
    yy, xx = np.mgrid[:n, :n] - n / 2
    radius = np.hypot(yy, xx) / (n / 2)
    edges = np.linspace(0, 1, bands + 1)
    total = power[radius <= 1].sum() + 1e-12
    share = [
        power[(radius >= a) & (radius < b)].sum() / total for a, b in itertools.pairwise(edges)
    ]
    return np.log(np.asarray(share) + 1e-12)


def chip_features(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Return the hand-crafted realism features of the face at ``landmarks``."""
    chip = align(image, landmarks, DLIB_150).chip
    lab = cv2.cvtColor(chip, cv2.COLOR_BGR2LAB).astype(np.float64)
    gray = cv2.cvtColor(chip, cv2.COLOR_BGR2GRAY)
    inner, ring, outer = lab[_INNER], lab[_RING], lab[_OUTER]
    colour = np.concatenate(
        [inner.mean(0), inner.std(0), inner.mean(0) - outer.mean(0), ring.std(0)]
    )
    codes = lbp_codes(gray)
    lbp = [
        np.bincount(codes[region], minlength=10) / max(region.sum(), 1)
        for region in (_INNER & _TOP, _INNER & ~_TOP, _RING)
    ]
    lap = np.abs(cv2.Laplacian(gray.astype(np.float64), cv2.CV_64F))
    detail = np.log(
        [lap[_INNER].mean() + 1e-6, lap[_RING].mean() + 1e-6, lap[_OUTER].mean() + 1e-6]
    )
    return np.concatenate([colour, *lbp, radial_spectrum(gray), detail]).astype(np.float32)


def _models() -> dict:
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError as exc:  # an optional dependency (kfaar[eval])
        raise ImportError("realism metrics need scikit-learn: pip install 'kfaar[eval]'") from exc
    return {
        "logreg": lambda: make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)),
        "gbm": lambda: HistGradientBoostingClassifier(max_iter=150, learning_rate=0.1),
    }


def cross_validated_auc(
    features: np.ndarray, virtual: np.ndarray, groups: np.ndarray, model: str, seed: int = 0
) -> float:
    """Return the out-of-fold AUC of ``model`` telling virtual (1) from real (0) samples."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold

    x, y = np.asarray(features, np.float64), np.asarray(virtual, int)
    if len(np.unique(groups)) < FOLDS or y.min() == y.max():
        raise ValueError(f"need both classes and at least {FOLDS} identities")
    out = np.zeros(len(y))
    folds = StratifiedGroupKFold(FOLDS, shuffle=True, random_state=seed)
    for train, test in folds.split(x, y, groups):
        clf = _models()[model]()
        clf.fit(x[train], y[train])
        out[test] = clf.predict_proba(x[test])[:, 1]
    return float(roc_auc_score(y, out))


def realism_auc(
    handcrafted: np.ndarray, embeddings: np.ndarray, virtual: np.ndarray, groups: np.ndarray
) -> dict:
    """Return cross-validated AUCs per feature set and model, and the highest as the headline."""
    sets = {
        "handcrafted": handcrafted,
        "embedding": embeddings,
        "all": np.hstack([handcrafted, embeddings]),
    }
    detail = {
        f"{model}/{name}": round(cross_validated_auc(x, virtual, groups, model), 4)
        for name, x in sets.items()
        for model in ("logreg", "gbm")
    }
    return {"realism_auc": max(detail.values()), "realism_auc_detail": detail}
