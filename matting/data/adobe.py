"""Adobe Image Matting / Composition-1k over its official folders and name lists
(docs/method.md#training-stages).

Nothing is hard-coded: an ``AdobeLayout`` names the fg, alpha and background folders and the
two name-list files (``training_fg_names.txt`` / ``training_bg_names.txt``, or the test ones).
Foreground ``i`` is paired with backgrounds ``bg_names[i * per_fg : (i + 1) * per_fg]``
(100 per fg for training: 43,100 pairs; 20 for testing: 1,000), as the official code does.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from torch.utils.data import Dataset

from passes.errors import DCPError

from . import io
from .folder import to_item
from .transforms import train_augment, trimap_from_alpha

Pair = tuple[str, str]  # (fg file name, bg file name)


@dataclass
class AdobeLayout:
    fg_dir: Path
    alpha_dir: Path
    bg_dir: Path
    fg_names: Path
    bg_names: Path

    def pairs(self, per_fg: int) -> list[Pair]:
        return composition_pairs(io.read_names(self.fg_names), io.read_names(self.bg_names), per_fg)

    def read(self, fg_name: str, bg_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fg RGB, alpha, bg RGB) uint8 of one pair; fg and alpha must agree in size."""
        fg = io.read_rgb(Path(self.fg_dir) / fg_name)
        alpha = io.read_gray(Path(self.alpha_dir) / fg_name)
        io.check_same_size(fg, alpha, Path(self.fg_dir) / fg_name, Path(self.alpha_dir) / fg_name)
        return fg, alpha, io.read_rgb(Path(self.bg_dir) / bg_name)


def composition_pairs(fg_names: list[str], bg_names: list[str], per_fg: int) -> list[Pair]:
    if len(bg_names) < len(fg_names) * per_fg:
        raise DCPError(f"{len(fg_names)} foregrounds x {per_fg} backgrounds need {len(fg_names) * per_fg} "
                       f"background names, the list has {len(bg_names)}")
    return [(fg, bg_names[i * per_fg + j]) for i, fg in enumerate(fg_names) for j in range(per_fg)]


def split_pairs(pairs: list, val_fraction: float = 0.2, seed: int = 7) -> tuple[list, list]:
    """A seeded train/validation split (the public code's 20 %, but reproducible), order kept."""
    if not 0 <= val_fraction < 1:
        raise DCPError(f"validation fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    n_val = int(round(len(pairs) * val_fraction))
    val_idx = set(rng.permutation(len(pairs))[:n_val].tolist())
    return ([p for i, p in enumerate(pairs) if i not in val_idx], [p for i, p in enumerate(pairs) if i in val_idx])


def write_pairs(path: str | os.PathLike, pairs: list[Pair]) -> None:
    io.write_text(path, "".join(f"{fg}\t{bg}\n" for fg, bg in pairs))


def read_pairs(path: str | os.PathLike) -> list[Pair]:
    """Pairs from a split file (``fg<TAB>bg`` per line, as ``dcp data split`` writes)."""
    pairs = []
    for n, line in enumerate(io.read_names(path), start=1):
        parts = line.split("\t")
        if len(parts) != 2:
            raise DCPError(f"{path}:{n}: expected 'fg_name<TAB>bg_name'")
        pairs.append((parts[0], parts[1]))
    return pairs


def fit_background(bg: np.ndarray, h: int, w: int) -> np.ndarray:
    """Upscale (bicubic) only if smaller than h x w, keeping the aspect, as the official code."""
    bh, bw = bg.shape[:2]
    if bw < w or bh < h:
        ratio = max(w / bw, h / bh)
        bg = cv2.resize(bg, (math.ceil(bw * ratio), math.ceil(bh * ratio)), interpolation=cv2.INTER_CUBIC)
    return bg


def composite_test(fg: np.ndarray, alpha: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """The official test composition: background fitted, cropped at the top-left, and
    alpha * fg + (1 - alpha) * bg truncated to uint8 (the official ``int()``)."""
    h, w = alpha.shape
    bg = fit_background(bg, h, w)[:h, :w]
    a = alpha.astype(np.float64)[..., None] / 255.0
    return np.clip(np.floor(a * fg + (1 - a) * bg), 0, 255).astype(np.uint8)


class AdobeTrain(Dataset):
    """Composition-1k training pairs composited on the fly at a random background crop.

    ``AdobeTrain(layout, pairs, crop=320, crop_scales=(1, 1.5, 2), flip=True, jitter=0.125,
    trimap_kernel=(1, 5), trimap_iterations=None, seed=None)``: ``pairs`` as from
    ``read_pairs(split file)`` or ``layout.pairs(100)``. Items are the dicts documented on
    ``MattingFolder`` (with ``fg`` / ``bg``), cropped as docs/method.md#training-stages says.
    """

    def __init__(self, layout: AdobeLayout, pairs: list[Pair], crop: int = 320,
                 crop_scales=(1.0, 1.5, 2.0), flip: bool = True, jitter: float = 0.125,
                 trimap_kernel=(1, 5), trimap_iterations=None, seed: int | None = None):
        self.layout, self.pairs, self.seed, self.epoch = layout, list(pairs), seed, 0
        self.aug = dict(crop=crop, crop_scales=tuple(crop_scales), flip=flip, jitter=jitter,
                        trimap_kernel=trimap_kernel, trimap_iterations=trimap_iterations)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng() if self.seed is None else np.random.default_rng([self.seed, self.epoch, i])
        fg_name, bg_name = self.pairs[i]
        fg, alpha, bg = self.layout.read(fg_name, bg_name)
        h, w = alpha.shape
        bg = fit_background(bg, h, w)
        y0, x0 = int(rng.integers(bg.shape[0] - h + 1)), int(rng.integers(bg.shape[1] - w + 1))
        bg = bg[y0:y0 + h, x0:x0 + w]
        a = alpha.astype(np.float32)[..., None] / 255.0
        image = np.clip(np.rint(a * fg + (1 - a) * bg), 0, 255).astype(np.uint8)
        # The crop is centred on an unknown pixel of a generous trimap; train_augment remakes it.
        arrays = {"image": image, "alpha": alpha, "trimap": trimap_from_alpha(alpha, 1), "fg": fg, "bg": bg}
        arrays = train_augment(arrays, rng, **self.aug)
        return to_item(arrays, f"{Path(fg_name).stem}|{Path(bg_name).stem}")


def find_trimap(trimap_dir: str | os.PathLike, fg_name: str, j: int) -> Path | None:
    """The official test trimap of composite ``j`` of ``fg_name``: ``STEM_j.png``, else ``STEM.png``."""
    stem = Path(fg_name).stem
    return io.find_by_stem(trimap_dir, f"{stem}_{j}") or io.find_by_stem(trimap_dir, stem)


# Folder names of the official / common Composition-1k test layouts, first match wins.
_TEST_DIRS = {"image": ("merged", "merged_test", "comp", "image"), "alpha": ("alpha", "mask", "mask_test", "alpha_copy"),
              "trimap": ("trimaps", "trimap", "trimaps_test")}


def test_set_items(root: str | os.PathLike) -> list[tuple[str, Path, Path, Path]]:
    """(name, image, trimap, alpha) paths of a test set: our folder layout (``dcp data synth`` /
    ``composite``), or a Composition-1k test folder with ``merged/``, ``alpha/`` and ``trimaps/``
    where alphas may be named per foreground (``STEM.png`` for composite ``STEM_j.png``)."""
    from .folder import folder_names
    root = Path(root)
    if not root.is_dir():
        raise DCPError(f"no such data folder: {root}")
    if (root / "image").is_dir() and (root / "alpha").is_dir():
        return [(n, root / "image" / f"{n}.png", root / "trimap" / f"{n}.png", root / "alpha" / f"{n}.png")
                for n in folder_names(root)]
    dirs = {k: next((root / c for c in cands if (root / c).is_dir()), None) for k, cands in _TEST_DIRS.items()}
    missing = [k for k, d in dirs.items() if d is None]
    if missing:
        raise DCPError(f"{root} is neither a dcp data folder (image/, alpha/, trimap/) nor a Composition-1k "
                       f"test folder (merged/, alpha/, trimaps/): no {' or '.join(missing)} folder")
    items = []
    for img in io.list_images(dirs["image"]):
        stem = img.stem
        base = stem.rsplit("_", 1)[0] if "_" in stem else stem
        alpha = io.find_by_stem(dirs["alpha"], stem) or io.find_by_stem(dirs["alpha"], base)
        trimap = io.find_by_stem(dirs["trimap"], stem) or io.find_by_stem(dirs["trimap"], base)
        if alpha is None or trimap is None:
            raise DCPError(f"no {'alpha' if alpha is None else 'trimap'} for {img} "
                           f"(looked for {stem}.* and {base}.*)")
        items.append((stem, img, trimap, alpha))
    return items
