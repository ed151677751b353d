"""Sample transforms of the training data and the model input (numpy, HWC uint8 in, HWC out;
the recipe: docs/method.md#training-stages).

The public code's trimap bug is fixed here: ``cv2.dilate(alpha, kernel, iterations=n)`` really
runs ``n`` iterations (the public code passed ``n`` as ``dst``, so one iteration only).
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def model_input(image: np.ndarray, trimap: np.ndarray) -> np.ndarray:
    """(4, H, W) float32: ImageNet-normalised RGB + trimap / 255 (docs/method.md#teacher).

    ``image`` is uint8 RGB (H, W, 3) or float in [0, 1]; ``trimap`` uint8 0/128/255 (H, W).
    """
    img = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
    rgb = ((img - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    return np.concatenate([rgb, trimap[None].astype(np.float32) / 255.0], axis=0)


def trimap_from_alpha(alpha: np.ndarray, radius: int) -> np.ndarray:
    """Deterministic test trimap: unknown = a band of ``radius`` px around 0 < alpha < 255."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return _trimap(alpha, kernel, 1)


def random_trimap(alpha: np.ndarray, rng: np.random.Generator,
                  kernel_sizes: tuple[int, int] = (1, 5), iterations: tuple[int, int] = (1, 20)) -> np.ndarray:
    """Training trimap: dilate/erode with an elliptic kernel of a random size in ``kernel_sizes``
    [lo, hi) for a random count in ``iterations`` [lo, hi) (the public code's ranges; the band
    is about size * iterations px each side). The iterations are REALLY applied (bug fixed)."""
    k = int(rng.integers(*kernel_sizes))
    n = int(rng.integers(*iterations))
    return _trimap(alpha, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)), n)


def _trimap(alpha: np.ndarray, kernel: np.ndarray, iterations: int) -> np.ndarray:
    dilated = cv2.dilate(alpha, kernel, iterations=iterations)
    eroded = cv2.erode(alpha, kernel, iterations=iterations)
    trimap = np.full(alpha.shape, 128, np.uint8)
    trimap[eroded >= 255] = 255
    trimap[dilated <= 0] = 0
    return trimap


def crop_around_unknown(arrays: dict[str, np.ndarray], trimap: np.ndarray, out_size: int,
                        rng: np.random.Generator, scales: Sequence[float] = (1.0, 1.5, 2.0)) -> dict[str, np.ndarray]:
    """Crop a square of ``out_size * scale`` (scale drawn from ``scales``, capped by the image)
    centred on a random unknown pixel, resized to ``out_size``; the same crop for every array.

    Alphas and trimaps are resized with nearest/linear as fits; trimaps are usually remade after.
    """
    h, w = trimap.shape
    side = min(int(round(out_size * float(rng.choice(scales)))), h, w)
    ys, xs = np.nonzero(trimap == 128)
    if len(ys):
        i = int(rng.integers(len(ys)))
        cy, cx = int(ys[i]), int(xs[i])
    else:
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y0 = int(np.clip(cy - side // 2, 0, h - side))
    x0 = int(np.clip(cx - side // 2, 0, w - side))
    out = {}
    for key, a in arrays.items():
        crop = a[y0:y0 + side, x0:x0 + side]
        if side != out_size:
            interp = cv2.INTER_NEAREST if key == "trimap" else cv2.INTER_LINEAR
            crop = cv2.resize(crop, (out_size, out_size), interpolation=interp)
        out[key] = np.ascontiguousarray(crop)
    return out


def random_flip(arrays: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Flip every array left-right with probability 1/2."""
    if rng.random() < 0.5:
        return {k: np.ascontiguousarray(a[:, ::-1]) for k, a in arrays.items()}
    return arrays


def color_jitter(image: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation each scaled by a factor in [1 - amount, 1 + amount]."""
    if amount <= 0:
        return image
    img = image.astype(np.float32)
    b, c, s = rng.uniform(1 - amount, 1 + amount, size=3)
    img = img * b
    gray = img.mean(axis=2, keepdims=True)
    img = (img - gray.mean()) * c + gray.mean()
    gray = img.mean(axis=2, keepdims=True)
    img = (img - gray) * s + gray
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def composite(fg: np.ndarray, bg: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """alpha * fg + (1 - alpha) * bg, all uint8 (alpha (H, W)), rounded to uint8."""
    a = alpha.astype(np.float32)[..., None] / 255.0
    return np.clip(np.rint(a * fg + (1 - a) * bg), 0, 255).astype(np.uint8)


def train_augment(arrays: dict[str, np.ndarray], rng: np.random.Generator, crop: int = 320,
                  crop_scales: Sequence[float] = (1.0, 1.5, 2.0), flip: bool = True, jitter: float = 0.0,
                  trimap_kernel: tuple[int, int] = (1, 5), trimap_iterations: tuple[int, int] | None = None,
                  ) -> dict[str, np.ndarray]:
    """The per-sample training pipeline (docs/method.md#training-stages) on uint8 arrays (image, alpha,
    trimap, optional fg/bg): crop around an unknown pixel at a random scale, resize to ``crop``,
    a new trimap from the crop's alpha, random flip, colour jitter of the image.

    ``trimap_iterations`` None = the public code's (1, 20) at a 320 crop, scaled with ``crop``
    (so a 32 px crop gets a proportionally narrow band, not an all-unknown trimap)."""
    if trimap_iterations is None:
        trimap_iterations = (1, max(2, round(20 * crop / 320)))
    arrays = crop_around_unknown(arrays, arrays["trimap"], crop, rng, crop_scales)
    arrays["trimap"] = random_trimap(arrays["alpha"], rng, trimap_kernel, trimap_iterations)
    if flip:
        arrays = random_flip(arrays, rng)
    arrays["image"] = color_jitter(arrays["image"], jitter, rng)
    return arrays
