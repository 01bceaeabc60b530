"""Simulated presentation attacks made from real face photos (labelled as simulated).

These are not real attacks: they imitate what a camera sees when someone holds up a
print or a phone screen, so the PAD pipeline and the demo can be exercised without an
attack data set. Each returns a new camera frame (uint8 BGR) of ``out_hw``.

- print: halftone dots, reduced paper dynamic range, paper texture, a perspective tilt
  of the sheet held in front of a background, and a specular glare;
- screen: the phone's pixel grid resampled by the camera (moire), display gamma and
  blue cast, a black bezel around the picture, and rolling refresh bands.
"""

from __future__ import annotations

import cv2
import numpy as np

KINDS = ("print", "screen")


def _background(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    """A dim, blurred indoor-like background of random colour blobs."""
    small = rng.integers(60, 140, (6, 8, 1)) + rng.integers(-15, 15, (6, 8, 3))
    small = small.clip(0, 255).astype(np.uint8)
    return cv2.GaussianBlur(cv2.resize(small, hw[::-1], interpolation=cv2.INTER_CUBIC), (0, 0), 9)


def _place(medium: np.ndarray, bg: np.ndarray, rng: np.random.Generator, tilt: float) -> np.ndarray:
    """Warp ``medium`` (the sheet or screen) into ``bg`` with a random perspective tilt."""
    h, w = bg.shape[:2]
    mh, mw = medium.shape[:2]
    fill = rng.uniform(0.7, 0.9)  # the medium fills most of the frame, as held close
    sw, sh = mw * fill * min(w / mw, h / mh), mh * fill * min(w / mw, h / mh)
    x0, y0 = (w - sw) / 2 + rng.uniform(-0.05, 0.05) * w, (h - sh) / 2
    dst = np.float32([[x0, y0], [x0 + sw, y0], [x0 + sw, y0 + sh], [x0, y0 + sh]])
    dst += rng.uniform(-tilt, tilt, (4, 2)).astype(np.float32) * np.float32([sw, sh])
    src = np.float32([[0, 0], [mw, 0], [mw, mh], [0, mh]])
    m = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(medium, m, (w, h), flags=cv2.INTER_LINEAR)
    mask = cv2.warpPerspective(np.ones((mh, mw), np.float32), m, (w, h))[..., None]
    return (warped * mask + bg * (1 - mask)).astype(np.float32)


def _recapture(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The camera's view: slight defocus, sensor noise and JPEG compression."""
    frame = cv2.GaussianBlur(frame, (0, 0), rng.uniform(0.5, 1.0))
    frame = frame + rng.normal(0, 2.0, frame.shape)
    _, jpg = cv2.imencode(".jpg", np.clip(frame, 0, 255).astype(np.uint8),
                           [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(75, 92))])  # fmt: skip
    return cv2.imdecode(jpg, cv2.IMREAD_COLOR)


def print_attack(photo: np.ndarray, rng: np.random.Generator, out_hw=(480, 640)) -> np.ndarray:
    """Return a camera frame of ``photo`` printed on paper and held up (simulated)."""
    up = cv2.resize(photo, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC).astype(np.float32)
    h, w = up.shape[:2]
    # Halftone: an ordered dot screen per ink channel, at a slightly different angle each.
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    pitch = rng.uniform(3.0, 4.5)
    out = np.empty_like(up)
    for c, angle in enumerate(np.radians([15, 45, 75])):
        u = xx * np.cos(angle) + yy * np.sin(angle)
        v = -xx * np.sin(angle) + yy * np.cos(angle)
        screen = (np.cos(2 * np.pi * u / pitch) * np.cos(2 * np.pi * v / pitch) + 1) * 127.5
        out[..., c] = np.where(up[..., c] > screen, 255.0, 0.0)
    out = cv2.GaussianBlur(out, (0, 0), pitch / 2.5)  # ink spreads; the camera blurs dots
    # Paper: a compressed range (no true black or white) and a fibrous texture.
    paper = 30 + out * rng.uniform(0.7, 0.8)
    grain = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 1.5)
    paper += (grain * rng.uniform(4, 8))[..., None]
    paper[:12], paper[-12:], paper[:, :12], paper[:, -12:] = 235, 235, 235, 235  # white margin
    frame = _place(paper, _background(rng, out_hw).astype(np.float32), rng, tilt=0.06)
    # Glare: a soft specular highlight somewhere on the sheet.
    gy, gx = rng.uniform(0.2, 0.8) * out_hw[0], rng.uniform(0.2, 0.8) * out_hw[1]
    yy, xx = np.mgrid[0 : out_hw[0], 0 : out_hw[1]].astype(np.float32)
    r = rng.uniform(0.1, 0.2) * out_hw[1]
    glare = np.exp(-((yy - gy) ** 2 + (xx - gx) ** 2) / (2 * r * r))
    frame += (rng.uniform(40, 90) * glare)[..., None]
    return _recapture(frame, rng)


def screen_attack(photo: np.ndarray, rng: np.random.Generator, out_hw=(480, 640)) -> np.ndarray:
    """Return a camera frame of ``photo`` replayed on a phone screen (simulated)."""
    # Display: gamma and a cool white point.
    shown = 255 * (photo.astype(np.float32) / 255) ** rng.uniform(0.75, 0.9)
    shown *= np.float32([1.08, 1.0, 0.92])  # BGR: bluish
    # The panel's pixel grid beats against the camera's sampling grid: moire, i.e. two
    # slightly rotated fine gratings whose product leaves coarse interference fringes.
    h, w = shown.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a, f1 = rng.uniform(-0.3, 0.3), rng.uniform(0.9, 1.1)
    g1 = np.cos(2 * np.pi * (xx * np.cos(a) + yy * np.sin(a)) * f1 * 0.45)
    g2 = np.cos(2 * np.pi * xx * 0.45)
    moire = shown * (1 + rng.uniform(0.08, 0.15) * g1 * g2)[..., None]
    moire = cv2.GaussianBlur(moire, (0, 0), 0.6)  # the camera only half-resolves the grid
    # Bezel: the picture inside a black phone body.
    b = int(0.06 * max(moire.shape[:2]))
    phone = cv2.copyMakeBorder(moire, b, 2 * b, b, b, cv2.BORDER_CONSTANT, value=(15, 15, 15))
    frame = _place(phone, _background(rng, out_hw).astype(np.float32), rng, tilt=0.04)
    # Rolling refresh: soft horizontal bands of brightness.
    rows = np.arange(out_hw[0], dtype=np.float32)[:, None, None]
    period, phase = rng.uniform(40, 90), rng.uniform(0, 2 * np.pi)
    frame *= 1 + rng.uniform(0.06, 0.12) * np.sin(2 * np.pi * rows / period + phase)
    return _recapture(frame, rng)


def simulate(kind: str, photo: np.ndarray, rng: np.random.Generator, out_hw=(480, 640)):
    """Return a simulated attack frame of ``kind`` (one of ``KINDS``)."""
    if kind == "print":
        return print_attack(photo, rng, out_hw)
    if kind == "screen":
        return screen_attack(photo, rng, out_hw)
    raise ValueError(f"attack kind must be one of {KINDS}, got {kind!r}")


def hand_moved(photo: np.ndarray, n: int, rng: np.random.Generator, out_hw=(480, 640)):
    """Return ``n`` frames of ``photo`` held and moved by hand (simulated still attack).

    The picture drifts, rotates, tilts in depth (perspective), comes closer or goes back,
    and is blurred by the motion now and then: everything a hand can do to a flat photo.
    """
    bg = _background(rng, out_hw).astype(np.float32)
    h, w = out_hw
    ph, pw = photo.shape[:2]
    side = 0.6 * min(h / ph, w / pw)
    src = np.float32([[0, 0], [pw, 0], [pw, ph], [0, ph]])
    frames = []
    state = np.zeros(6)  # dx, dy, angle, scale, tilt x, tilt y: a random walk
    for _ in range(n):
        state += rng.normal(0, [6, 6, 0.03, 0.02, 0.02, 0.02])
        state[2:] = np.clip(state[2:], -0.25, 0.25)
        dx, dy, ang, sc, tx, ty = state
        cx, cy = w / 2 + dx, h / 2 + dy
        half = np.float32([pw, ph]) * side * (1 + sc) / 2
        corners = np.float32([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
        # Tilting the sheet in depth shortens its far edge: a perspective squeeze.
        corners *= 1 + np.float32([[tx], [-tx], [-tx], [tx]]) * np.float32([[0, 1]])
        corners *= 1 + np.float32([[ty], [ty], [-ty], [-ty]]) * np.float32([[1, 0]])
        rot = np.float32([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
        dst = corners @ rot.T + np.float32([cx, cy])
        m = cv2.getPerspectiveTransform(src, dst.astype(np.float32))
        warped = cv2.warpPerspective(photo.astype(np.float32), m, (w, h))
        mask = cv2.warpPerspective(np.ones((ph, pw), np.float32), m, (w, h))[..., None]
        frame = warped * mask + bg * (1 - mask)
        if rng.random() < 0.3:  # a quick move: motion blur along a random direction
            k = np.zeros((9, 9), np.float32)
            k[4] = 1 / 9
            k = cv2.warpAffine(k, cv2.getRotationMatrix2D((4, 4), rng.uniform(0, 180), 1), (9, 9))
            frame = cv2.filter2D(frame, -1, k / max(k.sum(), 1e-6))
        frame *= rng.uniform(0.9, 1.1)  # the light changes as the sheet turns
        frames.append(np.clip(frame + rng.normal(0, 2, frame.shape), 0, 255).astype(np.uint8))
    return frames
