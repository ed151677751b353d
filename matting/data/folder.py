"""The project's data-set folder (what ``dcp data synth`` and ``dcp data composite`` write)
and the torch ``Dataset`` over it.

Layout: ``DIR/{image,alpha,trimap}/NAME.png`` (required), ``DIR/{fg,bg}/NAME.png`` (optional),
``DIR/meta.json`` (how it was made). Images are RGB, alpha and trimap 8-bit gray.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from passes.errors import DCPError

from ..atomic import new_folder
from . import io
from .transforms import model_input, train_augment

REQUIRED = ("image", "alpha", "trimap")
OPTIONAL = ("fg", "bg")


def write_folder(out: str | os.PathLike, names: list[str], make: Callable[[int], dict[str, np.ndarray]],
                 meta: dict, force: bool = False, desc: str = "writing") -> Path:
    """Write ``make(i)`` for every name into a temp folder next to ``out``, then rename it into
    place: ``out`` is complete or absent. ``make`` returns uint8 arrays keyed image/alpha/trimap
    (fg/bg optional). An existing non-empty ``out`` is an error unless ``force``."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise DCPError(f"{out} already exists and is not empty (use --force to replace it)")
    with new_folder(out) as tmp:
        for i, name in enumerate(tqdm(names, desc=desc, unit="img")):
            for key, arr in make(i).items():
                io.write_image(tmp / key / f"{name}.png", arr)
        (tmp / "meta.json").write_text(json.dumps({**meta, "names": names}, indent=1))
    return out


def folder_names(root: str | os.PathLike) -> list[str]:
    """Sample names of a data-set folder (from meta.json, else the image/ folder)."""
    root = Path(root)
    for key in REQUIRED:
        if not (root / key).is_dir():
            raise DCPError(f"{root} is not a data-set folder: no {key}/ inside "
                           f"(expected {'/, '.join(REQUIRED)}/; make one with `dcp data synth`)")
    meta = root / "meta.json"
    if meta.is_file():
        try:
            names = json.loads(meta.read_text())["names"]
            return [str(n) for n in names]
        except (ValueError, KeyError, TypeError) as e:
            raise DCPError(f"{meta} is not a valid meta.json ({e})") from e
    return [p.stem for p in io.list_images(root / "image")]


class MattingFolder(Dataset):
    """A data-set folder as a torch Dataset (``dcp data synth`` / ``dcp data composite`` output).

    ``MattingFolder(root, crop=None, train=False, crop_scales=(1, 1.5, 2), flip=True,
    jitter=0.0, trimap_kernel=(1, 5), trimap_iterations=None, seed=None, names=None, split=None)``

    - ``train=False`` (testing): full images with the stored trimap, unchanged.
    - ``train=True``: a square ``crop`` (default 320) of side ``crop * scale`` (scale from
      ``crop_scales``, capped by the image) centred on an unknown pixel and resized to ``crop``;
      a NEW trimap from the crop's alpha (``random_trimap``: elliptic kernel size in
      ``trimap_kernel``, iterations in ``trimap_iterations``, really applied; default (1, 20) at a
      320 crop, scaled with ``crop``); a random flip;
      colour jitter of ``jitter`` (0.125 in the paper) on the image.
    - ``seed``: with it, sample ``i`` at epoch ``e`` (``set_epoch``) is reproducible.
    - ``names``: a subset of the folder's names; ``split="train"`` / ``"valid"`` reads them from
      ``root/train.txt`` / ``root/valid.txt`` (what ``dcp data split --data root`` writes).

    Each item is a dict (batched by the default collate when sizes agree):
    ``input`` (4, H, W) float32 = ImageNet-normalised RGB + trimap/255 (the model input);
    ``image`` (3, H, W) float32 RGB in [0, 1]; ``alpha`` (1, H, W) float32 in [0, 1];
    ``trimap`` (1, H, W) float32 = trimap/255 (0, 128/255, 1); ``mask`` (1, H, W) float32,
    1 where the trimap is unknown (the loss mask); ``fg`` / ``bg`` (3, H, W) float32 in [0, 1]
    when the folder has them; ``name`` str.

    >>> import tempfile
    >>> from torch.utils.data import DataLoader
    >>> from matting.data.synth import write_synth
    >>> tmp = tempfile.TemporaryDirectory()
    >>> root = write_synth(tmp.name + "/synth", n=2, size=64, seed=0)
    >>> ds = MattingFolder(root, crop=32, train=True, seed=0)
    >>> batch = next(iter(DataLoader(ds, batch_size=2)))
    >>> batch["input"].shape, batch["mask"].shape
    (torch.Size([2, 4, 32, 32]), torch.Size([2, 1, 32, 32]))
    >>> tmp.cleanup()
    """

    def __init__(self, root: str | os.PathLike, crop: int | None = None, train: bool = False,
                 crop_scales: Iterable[float] = (1.0, 1.5, 2.0), flip: bool = True, jitter: float = 0.0,
                 trimap_kernel: tuple[int, int] = (1, 5), trimap_iterations: tuple[int, int] | None = None,
                 seed: int | None = None, names: list[str] | None = None, split: str | None = None):
        self.root = Path(root)
        if split is not None:
            split_file = self.root / f"{split}.txt"
            if not split_file.is_file():
                raise DCPError(f"no {split_file}; make it with `dcp data split --data {self.root}`")
            names = io.read_names(split_file)
        self.names = list(names) if names is not None else folder_names(self.root)
        if not self.names:
            raise DCPError(f"{self.root} holds no samples")
        self.has = [k for k in OPTIONAL if (self.root / k).is_dir()]
        self.train = train
        self.aug = dict(crop=crop or 320, crop_scales=tuple(crop_scales), flip=flip, jitter=jitter,
                        trimap_kernel=trimap_kernel, trimap_iterations=trimap_iterations)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.names)

    def load(self, i: int) -> dict[str, np.ndarray]:
        """The raw uint8 arrays of sample ``i`` (image/fg/bg RGB, alpha/trimap gray)."""
        name = self.names[i]
        path = lambda key: self.root / key / f"{name}.png"  # noqa: E731
        arrays = {"image": io.read_rgb(path("image")), "alpha": io.read_gray(path("alpha")),
                  "trimap": io.read_trimap(path("trimap"))}
        for key in self.has:
            arrays[key] = io.read_rgb(path(key))
        for key, a in arrays.items():
            io.check_same_size(arrays["image"], a, path("image"), path(key))
        return arrays

    def _rng(self, i: int) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng()
        return np.random.default_rng([self.seed, self.epoch, i])

    def __getitem__(self, i: int) -> dict:
        arrays = self.load(i)
        if self.train:
            arrays = train_augment(arrays, self._rng(i), **self.aug)
        return to_item(arrays, self.names[i])


def to_item(arrays: dict[str, np.ndarray], name: str) -> dict:
    """uint8 arrays -> the tensor item documented on ``MattingFolder``."""
    image, trimap = arrays["image"], arrays["trimap"]
    item = {"input": torch.from_numpy(model_input(image, trimap)),
            "image": _chw(image), "alpha": _chw(arrays["alpha"]), "trimap": _chw(trimap),
            "mask": torch.from_numpy((trimap == 128).astype(np.float32)[None]), "name": name}
    for key in OPTIONAL:
        if key in arrays:
            item[key] = _chw(arrays[key])
    return item


def _chw(a: np.ndarray) -> torch.Tensor:
    a = a[..., None] if a.ndim == 2 else a
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32) / 255.0)
