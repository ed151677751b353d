"""Inference on real images with any matting nn.Module (input convention: docs/method.md#teacher).

``predict`` normalises the image, appends trimap/255, pads to a multiple of 32 (reflect), runs
the model (whole, or in overlapping tiles when the image would not fit in memory), crops
back and forces the known regions of the trimap (0 -> 0, 255 -> 1).

>>> import numpy as np, matting
>>> img = np.zeros((50, 70, 3), np.uint8); tri = np.full((50, 70), 128, np.uint8); tri[:10] = 0
>>> a = predict(matting.dim(width=0.125), img, tri, device="cpu")
>>> a.shape, a.dtype, float(a[:10].max())
((50, 70), dtype('float32'), 0.0)
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from passes.errors import DCPError

from .data.transforms import model_input
from .device import pick_device

MULTIPLE = 32
MIN_TILE = 128


def force_known(alpha: np.ndarray, trimap: np.ndarray) -> np.ndarray:
    """Alpha with the trimap's background set to 0 and its foreground to 1."""
    alpha = alpha.copy()
    alpha[trimap == 0] = 0.0
    alpha[trimap == 255] = 1.0
    return alpha


def _run_padded(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Model on (1, C, h, w) padded to a multiple of 32 (reflect where possible), cropped back."""
    h, w = x.shape[-2:]
    ph, pw = -h % MULTIPLE, -w % MULTIPLE
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    out = model(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out[..., :h, :w]


def _tiles(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step)) + [length - tile]
    return sorted(set(starts))


def _ramp(n: int, overlap: int) -> np.ndarray:
    i = np.arange(n, dtype=np.float32)
    return np.clip(np.minimum(i + 1, n - i) / max(1, overlap), 1e-3, 1.0)


def _run_tiled(model: nn.Module, x: torch.Tensor, tile: int, overlap: int) -> np.ndarray:
    h, w = x.shape[-2:]
    acc = np.zeros((h, w), np.float32)
    weight = np.zeros((h, w), np.float32)
    for y0 in _tiles(h, tile, overlap):
        for x0 in _tiles(w, tile, overlap):
            part = x[..., y0:y0 + tile, x0:x0 + tile]
            out = _run_padded(model, part)[0, 0].float().cpu().numpy()
            th, tw = out.shape
            wgt = np.outer(_ramp(th, overlap), _ramp(tw, overlap))
            acc[y0:y0 + th, x0:x0 + tw] += out * wgt
            weight[y0:y0 + th, x0:x0 + tw] += wgt
    return acc / weight


def _is_oom(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in text \
        or "can't allocate memory" in text or "not enough memory" in text


def _first_width(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.out_channels
    return 64


def max_pixels(model: nn.Module, device: torch.device) -> int:
    """How many pixels one forward pass may take here: free memory over an estimate of the
    bytes per pixel (the full-resolution stage holds most activations; x12 for what is alive)."""
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = _cpu_available()
    per_pixel = _first_width(model) * 4 * 12
    return max(MIN_TILE * MIN_TILE, int(free * 0.6 / per_pixel))


def _cpu_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


@torch.inference_mode()
def predict(model: nn.Module, image: np.ndarray, trimap: np.ndarray, device=None,
            tile: int | None = None, overlap: int = 64, force: bool = True) -> np.ndarray:
    """Alpha (H, W) float32 in [0, 1] for uint8 RGB ``image`` (H, W, 3) and 0/128/255 ``trimap``.

    ``tile``: None = automatic (whole image if it fits the memory estimate, else tiles; an
    out-of-memory error halves the tile down to 128 px, then fails with a clear message);
    0 = never tile; N = tiles of N px (a multiple of 32) overlapping by ``overlap``.
    The model is moved to ``device`` (GPU when present) and put in eval mode.
    """
    if image.shape[:2] != trimap.shape:
        raise DCPError(f"image is {image.shape[1]}x{image.shape[0]} but trimap is {trimap.shape[1]}x{trimap.shape[0]}")
    device = pick_device(device)
    model = model.to(device).eval()
    x = torch.from_numpy(model_input(image, trimap))[None].to(device)
    h, w = trimap.shape
    auto = tile is None
    if auto:
        limit = max_pixels(model, device)
        tile = 0 if h * w <= limit else max(MIN_TILE, int(math.sqrt(limit)) // MULTIPLE * MULTIPLE)
    alpha = _predict_with_fallback(model, x, tile, overlap, auto)
    alpha = np.clip(alpha, 0.0, 1.0).astype(np.float32)
    return force_known(alpha, trimap) if force else alpha


def _predict_with_fallback(model, x, tile: int, overlap: int, auto: bool) -> np.ndarray:
    h, w = x.shape[-2:]
    while True:
        try:
            if tile == 0 or tile >= max(h, w):
                return _run_padded(model, x)[0, 0].float().cpu().numpy()
            return _run_tiled(model, x, tile, min(overlap, tile // 4))
        except (RuntimeError, MemoryError) as e:
            if not _is_oom(e):
                raise
            if x.device.type == "cuda":
                torch.cuda.empty_cache()
            current = tile or max(h, w)
            if not auto:
                raise DCPError(f"out of memory on {x.device.type} for a {w}x{h} image"
                               f"{f' in {tile}px tiles' if tile else ''}; try a smaller --tile (e.g. 512)") from None
            if current <= MIN_TILE:
                raise DCPError(f"out of memory on {x.device.type} for a {w}x{h} image even in "
                               f"{MIN_TILE}px tiles; use a smaller model or image") from None
            tile = max(MIN_TILE, (current // 2) // MULTIPLE * MULTIPLE)
