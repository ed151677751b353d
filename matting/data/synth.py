"""A built-in synthetic matting data set with real matting structure, deterministic by seed.

Each sample is a foreground colour field, an alpha and a background, composited. The alpha
has an opaque body with soft boundaries of varying width, holes, thin sub-pixel hair-like
strands (drawn anti-aliased at 4x and averaged down), and semi-transparent veils. The
background is textured with shapes and, in about half of the samples, colours close to the
foreground's, so that a better model scores visibly better.

>>> s = make_sample(64, seed=7, index=0)
>>> sorted(s), s["image"].shape, s["alpha"].dtype
(['alpha', 'bg', 'fg', 'image', 'trimap'], (64, 64, 3), dtype('uint8'))
"""
from __future__ import annotations

import cv2
import numpy as np

from .transforms import composite, trimap_from_alpha

SUPERSAMPLE = 4


def smooth_noise(shape: tuple[int, int], cell: float, rng: np.random.Generator, channels: int = 1) -> np.ndarray:
    """Zero-mean, roughly unit-variance noise smooth at the scale of ``cell`` pixels."""
    h, w = shape
    gh, gw = max(2, int(np.ceil(h / cell)) + 2), max(2, int(np.ceil(w / cell)) + 2)
    grid = rng.standard_normal((gh, gw, channels)).astype(np.float32)
    big = cv2.resize(grid, (int(gw * cell), int(gh * cell)), interpolation=cv2.INTER_CUBIC)
    big = big.reshape(big.shape[0], big.shape[1], channels)
    y0, x0 = int(rng.integers(0, max(1, big.shape[0] - h))), int(rng.integers(0, max(1, big.shape[1] - w)))
    out = big[y0:y0 + h, x0:x0 + w]
    return out[..., 0] if channels == 1 else out


def fractal(shape, cell, rng, channels=1, octaves=3) -> np.ndarray:
    return sum(smooth_noise(shape, max(1.5, cell / 2 ** o), rng, channels) / 2 ** o for o in range(octaves))


def _body(shape, rng) -> np.ndarray:
    """Opaque body: a smooth blob near the centre whose edge softness varies along it."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = h * rng.uniform(0.35, 0.65), w * rng.uniform(0.35, 0.65)
    ry, rx = h * rng.uniform(0.18, 0.32), w * rng.uniform(0.18, 0.32)
    field = 1.0 - np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    field += 0.35 * fractal(shape, min(h, w) / 4, rng)
    # Edge width in px varies smoothly: crisp in places, very soft (motion blur, fur) in others.
    softness = np.exp(smooth_noise(shape, min(h, w) / 3, rng) * 0.8) * rng.uniform(0.01, 0.04)
    return np.clip(field / softness + 0.5, 0, 1)


def _holes(shape, body, rng) -> np.ndarray:
    """Multiplicative mask with a few soft-edged holes inside the body."""
    h, w = shape
    mask = np.ones(shape, np.float32)
    ys, xs = np.nonzero(body > 0.99)
    for _ in range(int(rng.integers(0, 4))):
        if not len(ys):
            break
        i = int(rng.integers(len(ys)))
        r = max(1.5, min(h, w) * rng.uniform(0.02, 0.07))
        hole = np.zeros(shape, np.float32)
        cv2.ellipse(hole, (int(xs[i]), int(ys[i])), (int(r), int(r * rng.uniform(0.5, 1.5))),
                    float(rng.uniform(0, 180)), 0, 360, 1.0, -1, cv2.LINE_AA)
        hole = cv2.GaussianBlur(hole, (0, 0), rng.uniform(0.5, 2.0))
        mask *= 1 - hole
    return mask


def _strands(shape, body, rng) -> np.ndarray:
    """Thin hair-like strands growing out of the body edge, partial-coverage, anti-aliased."""
    h, w = shape
    s = SUPERSAMPLE
    canvas = np.zeros((h * s, w * s), np.float32)
    ys, xs = np.nonzero((body > 0.3) & (body < 0.9))
    if not len(ys):
        return canvas[::s, ::s] * 0
    cy, cx = np.mean(ys), np.mean(xs)
    n = int(rng.integers(15, 60) * max(1.0, min(h, w) / 160))
    for _ in range(n):
        i = int(rng.integers(len(ys)))
        y, x = float(ys[i]), float(xs[i])
        angle = np.arctan2(y - cy, x - cx) + rng.normal(0, 0.5)  # grow outward, roughly
        length = min(h, w) * rng.uniform(0.05, 0.3)
        steps = max(4, int(length / 2))
        curl = rng.normal(0, 0.08)
        pts = []
        for _ in range(steps):
            pts.append((x * s, y * s))
            angle += curl + rng.normal(0, 0.05)
            x += 2 * np.cos(angle)
            y += 2 * np.sin(angle)
        pts = np.round(np.array(pts) * 16).astype(np.int32)  # 4 fractional bits for smooth AA
        cv2.polylines(canvas, [pts], False, float(rng.uniform(0.5, 1.0)), int(rng.integers(1, 4)),
                      cv2.LINE_AA, shift=4)
    return cv2.resize(canvas, (w, h), interpolation=cv2.INTER_AREA)


def _veil(shape, rng) -> np.ndarray:
    """A semi-transparent region (glass, veil, smoke): constant-ish partial alpha, soft edge."""
    h, w = shape
    field = fractal(shape, min(h, w) / 4, rng) + rng.uniform(-1.3, -0.8)
    level = rng.uniform(0.2, 0.7) * (1 + 0.25 * smooth_noise(shape, min(h, w) / 5, rng))
    return np.clip(field / 0.08, 0, 1) * np.clip(level, 0.05, 0.95)


def _colours(shape, rng, base=None) -> np.ndarray:
    base = rng.uniform(0.1, 0.9, size=3) if base is None else base
    field = base + 0.18 * fractal(shape, min(shape) / 3, rng, channels=3)
    field += 0.05 * smooth_noise(shape, 2.0, rng, channels=3)  # fine texture
    return field


def _background(shape, rng, fg_base) -> np.ndarray:
    h, w = shape
    hard = rng.random() < 0.5  # background palette close to the foreground's
    base = np.clip(fg_base + rng.normal(0, 0.08, 3), 0, 1) if hard else rng.uniform(0.05, 0.95, 3)
    bg = _colours(shape, rng, base) * 255
    for _ in range(int(rng.integers(3, 10))):  # clutter: edges the model must not mistake for alpha
        colour = tuple(float(c) for c in np.clip(base + rng.normal(0, 0.3, 3), 0, 1) * 255)
        p1 = (int(rng.integers(w)), int(rng.integers(h)))
        kind = rng.integers(3)
        if kind == 0:
            cv2.line(bg, p1, (int(rng.integers(w)), int(rng.integers(h))), colour, int(rng.integers(1, 4)), cv2.LINE_AA)
        elif kind == 1:
            cv2.circle(bg, p1, int(rng.integers(2, max(3, min(h, w) // 6))), colour, -1, cv2.LINE_AA)
        else:
            cv2.rectangle(bg, p1, (int(rng.integers(w)), int(rng.integers(h))), colour, -1)
    if rng.random() < 0.5:  # depth of field
        bg = cv2.GaussianBlur(bg, (0, 0), rng.uniform(0.5, 2.5))
    return bg


def make_sample(size: int | tuple[int, int], seed: int = 0, index: int = 0,
                band: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """One sample as uint8 arrays: ``fg``, ``bg``, ``image`` (H, W, 3 RGB), ``alpha``, ``trimap`` (H, W).

    Deterministic in (size, seed, index). ``band`` = (lo, hi) px of the trimap's unknown band
    half-width, drawn per sample (default scales with the size: about 1.5-4 % of the side).
    """
    shape = (size, size) if isinstance(size, int) else tuple(size)
    rng = np.random.default_rng([seed, index, shape[0], shape[1]])
    body = _body(shape, rng)
    alpha = body * _holes(shape, body, rng)
    alpha = np.maximum(alpha, _strands(shape, body, rng))
    veil = _veil(shape, rng)
    if rng.random() < 0.6:
        alpha = np.maximum(alpha, veil)
    alpha8 = np.clip(np.rint(alpha * 255), 0, 255).astype(np.uint8)
    fg_base = rng.uniform(0.1, 0.9, size=3)
    fg = np.clip(_colours(shape, rng, fg_base) * 255, 0, 255)
    bg = np.clip(_background(shape, rng, fg_base), 0, 255)
    fg8, bg8 = np.rint(fg).astype(np.uint8), np.rint(bg).astype(np.uint8)
    lo, hi = band or (max(1, round(min(shape) * 0.015)), max(2, round(min(shape) * 0.04)))
    trimap = trimap_from_alpha(alpha8, int(rng.integers(lo, hi + 1)))
    return {"fg": fg8, "bg": bg8, "image": composite(fg8, bg8, alpha8), "alpha": alpha8, "trimap": trimap}


def write_synth(out, n: int, size: int = 320, seed: int = 0, band: tuple[int, int] | None = None,
                force: bool = False):
    """Write ``n`` samples as a data-set folder (``DIR/{image,fg,bg,alpha,trimap}/NAME.png`` +
    ``meta.json``), complete or absent. Sample ``i`` depends only on (size, seed, i)."""
    from .folder import write_folder
    if n < 1 or size < 8:
        raise ValueError(f"need n >= 1 and size >= 8, got n={n}, size={size}")
    names = [f"{i:05d}" for i in range(n)]
    meta = {"kind": "synthetic", "generator": "matting.data.synth", "version": 1,
            "n": n, "size": size, "seed": seed, "band": list(band) if band else None}
    return write_folder(out, names, lambda i: make_sample(size, seed, i, band), meta, force=force, desc="synth")
