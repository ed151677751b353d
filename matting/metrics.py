"""The Composition-1k metrics, exactly as the official MATLAB evaluation code computes them.

All four take ``pred``, ``gt`` (uint8 alpha, 0..255) and ``trimap`` (0/128/255) of one shape;
only pixels with ``trimap == 128`` count. Values come in the units papers report:
SAD / 1000, MSE unscaled (papers print it x 1e3), Grad / 1000, Conn / 1000 (definitions: docs/method.md#metrics).

>>> import numpy as np
>>> p = np.full((4, 4), 255, np.uint8); g = np.zeros((4, 4), np.uint8); t = np.full((4, 4), 128, np.uint8)
>>> sad(p, g, t)   # 16 pixels off by 1.0, / 1000
0.016
>>> mse(p, p, t)
0.0

SAD and MSE are exact (integer sums); Grad and Conn follow the reference's single precision.
Agreement with the MATLAB/Octave golden values is ~1e-7 relative. A trimap without unknown
pixels gives 0.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

GRAD_SIGMA = 1.4
CONN_STEP = 0.1


def _check(pred, gt, trimap) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred, gt, trimap = np.asarray(pred), np.asarray(gt), np.asarray(trimap)
    for name, a in (("pred", pred), ("gt", gt)):
        if a.dtype != np.uint8:
            if not np.issubdtype(a.dtype, np.integer) or a.size and (a.min() < 0 or a.max() > 255):
                raise TypeError(f"{name} must be a uint8 alpha 0..255 (got {a.dtype}); "
                                "use matting.metrics.to_uint8 for float alphas in [0, 1]")
    if not (pred.shape == gt.shape == trimap.shape) or pred.ndim != 2:
        raise ValueError(f"pred, gt and trimap must be 2-D of one shape, got {pred.shape}, {gt.shape}, {trimap.shape}")
    return pred.astype(np.uint8), gt.astype(np.uint8), trimap


# Two float alphas closer than half an 8-bit level round to the same stored matte; callers that
# compare a deployed model with torch (ONNX export) accept any difference below it.
ALPHA_HALF_LEVEL = 0.5 / 255


def to_uint8(alpha: np.ndarray) -> np.ndarray:
    """A float alpha in [0, 1] as the uint8 image the metrics read (rounded, clipped)."""
    return np.clip(np.rint(np.asarray(alpha, np.float64) * 255.0), 0, 255).astype(np.uint8)


def _unknown(trimap: np.ndarray) -> np.ndarray:
    return trimap == 128


def _diff(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    return pred.astype(np.int32) - gt.astype(np.int32)  # exact: the sums below are integers


def sad(pred, gt, trimap) -> float:
    """Sum of absolute differences over the unknown region, alpha in [0, 1], / 1000."""
    pred, gt, trimap = _check(pred, gt, trimap)
    total = np.abs(_diff(pred, gt)).sum(where=_unknown(trimap), dtype=np.int64)
    return float(total / 255.0 / 1000.0)


def mse(pred, gt, trimap) -> float:
    """Mean squared error over the unknown region, alpha in [0, 1] (papers print it x 1e3)."""
    pred, gt, trimap = _check(pred, gt, trimap)
    unknown = _unknown(trimap)
    n = int(unknown.sum())
    if n == 0:
        return 0.0
    d = _diff(pred, gt)
    return float((d * d).sum(where=unknown, dtype=np.int64) / 255.0 ** 2 / n)


def gauss_gradient_kernel(sigma: float = GRAD_SIGMA) -> np.ndarray:
    """The official ``gaussgradient`` x-kernel: hx[i, j] = G(u_i) * G'(u_j), unit L2 norm.

    Its half-size is ceil(sigma * sqrt(-2 ln(sqrt(2 pi) sigma 0.01))), 4 for sigma 1.4 (9x9).
    """
    g, dg = _gauss_1d(sigma)
    hx = np.outer(g, dg)
    return hx / math.sqrt(float((hx * hx).sum()))


def _gauss_1d(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    half = math.ceil(sigma * math.sqrt(-2.0 * math.log(math.sqrt(2 * math.pi) * sigma * 1e-2)))
    u = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-u ** 2 / (2 * sigma ** 2)) / (sigma * math.sqrt(2 * math.pi))
    return g, -u * g / sigma ** 2


def _mat2gray(a: np.ndarray) -> np.ndarray:
    lo, hi = int(a.min()), int(a.max())
    # A constant image has no gradient whatever constant it maps to; MATLAB keeps it as is.
    if hi == lo:
        return a.astype(np.float32)
    lut = ((np.arange(256, dtype=np.float64) - lo) / (hi - lo)).astype(np.float32)
    return lut[a]


def _gradient_magnitude(a: np.ndarray, sigma: float) -> np.ndarray:
    """|grad| of imfilter(a, hx, 'replicate', 'conv') and its transpose, via the separable form
    (float32, per channel for (H, W, C) input)."""
    g, dg = _gauss_1d(sigma)
    g = g / math.sqrt(float((np.outer(g, dg) ** 2).sum()))  # the unit-norm scale, folded in once
    # 'conv' flips the kernel: G is even, G' odd, so the flip only touches G'.
    flipped = dg[::-1].copy()
    gx = cv2.sepFilter2D(a, cv2.CV_32F, flipped, g, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.sepFilter2D(a, cv2.CV_32F, g, flipped, borderType=cv2.BORDER_REPLICATE)
    return np.sqrt(gx * gx + gy * gy)


def grad(pred, gt, trimap, sigma: float = GRAD_SIGMA) -> float:
    """Gradient error: sum over unknown of (|grad p| - |grad g|)^2 after mat2gray, / 1000."""
    pred, gt, trimap = _check(pred, gt, trimap)
    # Filter both as the two channels of one image: the same code path for each pixel, so
    # identical inputs give exactly 0 (separate calls may differ in SIMD rounding by ~1e-16).
    amp = _gradient_magnitude(np.dstack([_mat2gray(pred), _mat2gray(gt)]), sigma)
    err = (amp[..., 0] - amp[..., 1]) ** 2
    return float(err.sum(where=_unknown(trimap), dtype=np.float64) / 1000.0)


def conn_thresholds(step: float = CONN_STEP) -> np.ndarray:
    """0, step, ..., 1, rounded: np.arange(0, 1.1, 0.1)[6] is 0.6000000000000001 and would miss 153/255."""
    n = int(round(1.0 / step))
    return np.round(np.arange(n + 1) * step, 10)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 4-connected component of ``mask``; ties go to the first component in scan order.

    Callers pass TRANSPOSED masks, so the row-major scan visits pixels in MATLAB's column-major
    order and the tie-break matches ``bwconncomp`` + ``max`` (first of equal sizes).
    """
    n, labels = cv2.connectedComponentsWithAlgorithm(mask.view(np.uint8), 4, cv2.CV_32S, cv2.CCL_DEFAULT)
    if n <= 1:
        return np.zeros_like(mask)
    areas = _areas(labels, n)
    tied = np.flatnonzero(areas == areas.max()) + 1
    best = tied[0]
    if len(tied) > 1:  # don't rely on the labeler's numbering: the first pixel in scan order wins
        flat = labels.ravel()
        best = min(tied, key=lambda lab: int(np.argmax(flat == lab)))
    return labels == best


def _areas(labels: np.ndarray, n: int) -> np.ndarray:
    """Pixel count of labels 1..n-1. calcHist on uint16 is ~2x faster than bincount (which
    widens to int64); its float32 counts are exact below 2^24 pixels."""
    if n <= 65536 and labels.size < 2 ** 24:
        labels16 = labels.astype(np.uint16)
        return cv2.calcHist([labels16], [0], None, [n], [0, n]).ravel()[1:].astype(np.int64)
    return np.bincount(labels.ravel(), minlength=n)[1:]


def _first_level_at_least(t: float) -> int:
    """Smallest uint8 k with single(k)/255 >= t, so ``alpha >= t`` becomes an exact integer test."""
    ok = (np.arange(256, dtype=np.float32) / np.float32(255)) >= t
    return int(np.argmax(ok)) if ok.any() else 256


def conn(pred, gt, trimap, step: float = CONN_STEP) -> float:
    """Connectivity error (official ``compute_connectivity_error``), / 1000."""
    pred, gt, trimap = _check(pred, gt, trimap)
    # Work on transposes (column-major order, see _largest_component); the final sum does not care.
    pred_t, gt_t = np.ascontiguousarray(pred.T), np.ascontiguousarray(gt.T)
    both = np.minimum(pred_t, gt_t)  # (p >= t) & (g >= t)  <=>  min(p, g) >= t
    thresholds = conn_thresholds(step)
    level = np.full(both.shape, -1.0, np.float32)
    unassigned = np.ones(both.shape, bool)
    for i in range(1, len(thresholds)):
        omega = _largest_component(both >= _first_level_at_least(thresholds[i]))
        newly = unassigned & ~omega
        level[newly] = thresholds[i - 1]
        unassigned &= omega
    level[unassigned] = 1.0
    err = np.abs(_phi(pred_t, level) - _phi(gt_t, level))
    return float(err.sum(where=_unknown(trimap.T), dtype=np.float64) / 1000.0)


def _phi(alpha: np.ndarray, level: np.ndarray) -> np.ndarray:
    d = alpha.astype(np.float32) / np.float32(255) - level
    return 1 - d * (d >= 0.15)


def all_metrics(pred, gt, trimap) -> dict[str, float]:
    """``{"sad", "mse", "grad", "conn"}`` for one image."""
    return {"sad": sad(pred, gt, trimap), "mse": mse(pred, gt, trimap),
            "grad": grad(pred, gt, trimap), "conn": conn(pred, gt, trimap)}


METRICS = ("sad", "mse", "grad", "conn")
