"""Foreground colour estimation for halo-free cutouts: multi-level foreground estimation
(Germer et al., "Fast Multi-Level Foreground Estimation", 2020), vectorised in numpy.

Given image I and alpha a, find F and B with I ~ a F + (1 - a) B that are smooth where alpha
changes little. Solved coarse-to-fine: at each level (the image downscaled), a few Jacobi
sweeps of the per-pixel 2x2 normal equations with neighbour smoothness weights
``eps_r + omega * |a_i - a_j|``, starting from the coarser level's solution.

>>> import numpy as np
>>> img = np.full((8, 8, 3), 0.5, np.float32); alpha = np.full((8, 8), 0.5, np.float32)
>>> fg, bg = estimate_foreground(img, alpha)
>>> bool(np.allclose(0.5 * fg + 0.5 * bg, img, atol=1e-2))
True
"""
from __future__ import annotations

import math

import cv2
import numpy as np


def estimate_foreground(image: np.ndarray, alpha: np.ndarray, regularization: float = 1e-5,
                        gradient_weight: float = 1.0, small_size: int = 32,
                        small_iterations: int = 10, big_iterations: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """F and B (H, W, 3) float32 in [0, 1] for ``image`` (H, W, 3) in [0, 1] (or uint8) and
    ``alpha`` (H, W) in [0, 1] (or uint8). Levels at most ``small_size`` px get
    ``small_iterations`` sweeps, larger ones ``big_iterations``."""
    image = _unit(image)
    alpha = _unit(alpha)
    h0, w0 = alpha.shape
    fg = image.mean(axis=(0, 1), keepdims=True).astype(np.float32)  # 1x1 start
    bg = fg.copy()
    n_levels = max(1, math.ceil(math.log2(max(h0, w0))))
    for level in range(n_levels + 1):
        h = max(1, round(h0 ** (level / n_levels)))
        w = max(1, round(w0 ** (level / n_levels)))
        img_l = _resize(image, h, w)
        a_l = _resize(alpha, h, w)
        fg, bg = _resize(fg, h, w), _resize(bg, h, w)
        iters = small_iterations if max(h, w) <= small_size else big_iterations
        for _ in range(iters):
            fg, bg = _sweep(img_l, a_l, fg, bg, regularization, gradient_weight)
    return fg, bg


def _unit(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)


def _resize(a: np.ndarray, h: int, w: int) -> np.ndarray:
    if a.shape[:2] == (h, w):
        return a
    out = cv2.resize(a, (w, h), interpolation=cv2.INTER_NEAREST)
    return out.reshape(h, w, *a.shape[2:])


def _neighbours(a: np.ndarray):
    """Left, right, up, down neighbours with the border replicated."""
    pad = np.pad(a, [(1, 1), (1, 1)] + [(0, 0)] * (a.ndim - 2), mode="edge")
    return pad[1:-1, :-2], pad[1:-1, 2:], pad[:-2, 1:-1], pad[2:, 1:-1]


def _sweep(image, alpha, fg, bg, eps_r, omega):
    """One Jacobi sweep of the 2x2 systems [a00 a01; a01 a11] [F; B] = [b0; b1] per pixel."""
    a0 = alpha
    a1 = 1.0 - a0
    a00, a11, a01 = a0 * a0, a1 * a1, a0 * a1
    b0, b1 = a0[..., None] * image, a1[..., None] * image
    for a_n, f_n, g_n in zip(_neighbours(alpha), _neighbours(fg), _neighbours(bg)):
        da = eps_r + omega * np.abs(a0 - a_n)
        a00 = a00 + da
        a11 = a11 + da
        b0 = b0 + da[..., None] * f_n
        b1 = b1 + da[..., None] * g_n
    inv_det = 1.0 / (a00 * a11 - a01 * a01)
    new_fg = (inv_det * a11)[..., None] * b0 - (inv_det * a01)[..., None] * b1
    new_bg = (inv_det * a00)[..., None] * b1 - (inv_det * a01)[..., None] * b0
    return np.clip(new_fg, 0, 1).astype(np.float32), np.clip(new_bg, 0, 1).astype(np.float32)


def cutout(image: np.ndarray, alpha: np.ndarray, fg: np.ndarray | None = None) -> np.ndarray:
    """RGBA uint8 cutout: the estimated foreground colour (not the image colour, which carries the
    old background into the edge as a halo) with ``alpha``."""
    if fg is None:
        fg, _ = estimate_foreground(image, alpha)
    a8 = alpha if alpha.dtype == np.uint8 else np.clip(np.rint(alpha * 255), 0, 255).astype(np.uint8)
    rgb = np.clip(np.rint(fg * 255), 0, 255).astype(np.uint8)
    return np.dstack([rgb, a8])


def blend(fg: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    """alpha * F + (1 - alpha) * background as uint8 RGB (fg float [0, 1], background uint8)."""
    a = _unit(alpha)[..., None]
    out = a * fg + (1 - a) * _unit(background)
    return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)
