"""Reading and writing images the way real files come: RGBA, grayscale, 16-bit, odd trimaps.

What is accepted, with one warning each (printed once per kind, on stderr):
- images: RGBA -> its alpha channel is dropped; grayscale -> replicated to RGB;
  16-bit -> scaled to 8 bit (round(v / 257)).
- trimaps: RGB/RGBA with equal colour channels -> one channel; values other than 0/128/255
  (e.g. a hand-drawn unknown grey of 102) -> quantised: < 85 -> 0, > 170 -> 255, else 128.
What is refused with a one-line ``DCPError``: missing, unreadable or truncated files, colour
trimaps/alphas whose channels differ, and (by callers) size mismatches.
Writes go through ``matting.atomic`` (``write_bytes`` / ``write_text`` are re-exported here):
never a partial file.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import cv2
import numpy as np

from passes.errors import DCPError

from ..atomic import write_bytes, write_text  # noqa: F401  (re-exported: image and report writers)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_PNG_SIG, _PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"
_warned: set[str] = set()


def warn_once(kind: str, message: str) -> None:
    """Print ``warning: message`` the first time a kind of conversion happens in this process."""
    if kind in _warned:
        return
    _warned.add(kind)
    print(f"warning: {message} (further such warnings are not shown)", file=sys.stderr)


def require_file(path: str | os.PathLike, kind: str) -> Path:
    """``path`` as a Path if it is an existing file, else a one-line ``DCPError`` (``kind``: what
    was expected, e.g. "an image file")."""
    path = Path(path)
    if not path.exists():
        raise DCPError(f"no such file: {path}")
    if path.is_dir():
        raise DCPError(f"{path} is a folder, expected {kind}")
    return path


def _decode(path: str | os.PathLike) -> np.ndarray:
    path = require_file(path, "an image file")
    data = path.read_bytes()
    if data.startswith(_PNG_SIG) and _PNG_END not in data[-32:]:
        raise DCPError(f"cannot read {path}: the PNG file is truncated")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if img is None:
        raise DCPError(f"cannot read {path}: not an image file, or it is truncated or corrupt")
    return img


def _to_8bit(img: np.ndarray, path) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        warn_once("16bit", f"{path} is 16-bit; converted to 8 bit")
        return np.rint(img.astype(np.float64) / 257.0).astype(np.uint8)
    raise DCPError(f"{path}: unsupported pixel type {img.dtype} (expected 8- or 16-bit)")


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image as uint8 RGB (H, W, 3), converting RGBA / grayscale / 16-bit with a warning."""
    img = _to_8bit(_decode(path), path)
    if img.ndim == 2 or img.shape[2] == 1:
        warn_once("gray", f"{path} is grayscale; used as RGB")
        return np.repeat(img.reshape(img.shape[0], img.shape[1], 1), 3, axis=2)
    if img.shape[2] == 4:
        warn_once("rgba", f"{path} is RGBA; its alpha channel is ignored")
        img = img[:, :, :3]
    return np.ascontiguousarray(img[:, :, ::-1])


def read_gray(path: str | os.PathLike, what: str = "alpha") -> np.ndarray:
    """A one-channel uint8 image (alpha matte or trimap); colour files must have equal channels."""
    img = _to_8bit(_decode(path), path)
    if img.ndim == 3:
        colour = img[:, :, :3]
        if img.shape[2] >= 3 and not (np.array_equal(colour[..., 0], colour[..., 1])
                                      and np.array_equal(colour[..., 0], colour[..., 2])):
            raise DCPError(f"{path}: a {what} must be grayscale, but its colour channels differ")
        warn_once(f"{what}-colour", f"{path} is a {img.shape[2]}-channel {what}; using its first channel")
        img = img[:, :, 0]
    return np.ascontiguousarray(img)


def quantise_trimap(trimap: np.ndarray, source: str = "trimap") -> np.ndarray:
    """Map any uint8 trimap to 0/128/255 (< 85 -> 0, > 170 -> 255, else 128), warning if it changed."""
    if np.isin(trimap, (0, 128, 255)).all():
        return trimap
    values = np.unique(trimap)
    shown = ", ".join(map(str, values[:6])) + (", ..." if len(values) > 6 else "")
    warn_once("trimap-values", f"{source} has values other than 0/128/255 ({shown}); "
                               "quantised: < 85 -> background, > 170 -> foreground, else unknown")
    out = np.full_like(trimap, 128)
    out[trimap < 85] = 0
    out[trimap > 170] = 255
    return out


def read_trimap(path: str | os.PathLike) -> np.ndarray:
    """A trimap as uint8 0/128/255 (H, W)."""
    return quantise_trimap(read_gray(path, "trimap"), str(path))


def check_same_size(image: np.ndarray, other: np.ndarray, image_path, other_path) -> None:
    if image.shape[:2] != other.shape[:2]:
        raise DCPError(f"size mismatch: {image_path} is {image.shape[1]}x{image.shape[0]} but "
                       f"{other_path} is {other.shape[1]}x{other.shape[0]} (width x height)")


def write_image(path: str | os.PathLike, img: np.ndarray) -> None:
    """Write uint8 gray (H, W), RGB (H, W, 3) or RGBA (H, W, 4) atomically; format from the suffix."""
    path = Path(path)
    if img.ndim == 3:
        img = img[:, :, [2, 1, 0]] if img.shape[2] == 3 else img[:, :, [2, 1, 0, 3]]
    ext = path.suffix.lower() or ".png"
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(img))
    if not ok:
        raise DCPError(f"cannot encode an image as {ext} for {path}")
    write_bytes(path, buf.tobytes())


def read_names(path: str | os.PathLike) -> list[str]:
    """Non-empty lines of a name-list file (Adobe's fg/bg lists, train.txt / valid.txt), stripped."""
    path = Path(path)
    if not path.is_file():
        raise DCPError(f"no such name-list file: {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DCPError(f"no such folder: {folder}")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def find_by_stem(folder: str | os.PathLike, stem: str) -> Path | None:
    """The image in ``folder`` named ``stem`` with any image extension, or None."""
    for ext in IMAGE_EXTS:
        for cand in (Path(folder) / f"{stem}{ext}", Path(folder) / f"{stem}{ext.upper()}"):
            if cand.is_file():
                return cand
    return None
