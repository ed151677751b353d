"""``dcp matte``: alpha mattes (and cutouts, composites) for real images, one or a folder."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from matting import foreground
from matting.data import io
from matting.device import pick_device
from matting.infer import predict
from passes.errors import DCPError

from ..models import load_model
from ._common import add_model_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("matte", help="predict alpha mattes for images with trimaps (a file or a folder)")
    add_model_arg(p)
    p.add_argument("--image", required=True, help="image file, or a folder of images")
    p.add_argument("--trimap", required=True, help="trimap file (0/128/255), or a folder with one per image (same stem)")
    p.add_argument("-o", "--out", required=True, help="alpha PNG to write (a folder in folder mode)")
    p.add_argument("--cutout", help="also write an RGBA cutout with estimated foreground colours (file or folder)")
    p.add_argument("--background", help="an image to composite the foreground onto (needs --composite)")
    p.add_argument("--composite", help="write the foreground over --background here (file or folder)")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:1 ...")
    p.add_argument("--tile", type=int, help="tile size in px for large images (default: automatic; 0 = never)")
    p.set_defaults(func=run)


def _jobs(args) -> list[tuple[Path, Path, dict[str, Path]]]:
    """(image, trimap, {output kind: path}) for each image, all checked before any work."""
    image, trimap = Path(args.image), Path(args.trimap)
    outs = {"alpha": args.out, "cutout": args.cutout, "composite": args.composite}
    outs = {k: Path(v) for k, v in outs.items() if v}
    if not image.is_dir():
        if trimap.is_dir():
            raise DCPError(f"--image is a file but --trimap {trimap} is a folder")
        for kind, path in outs.items():
            if path.is_dir():
                raise DCPError(f"{path} is a folder; give a file name for the {kind} of one image")
        return [(image, trimap, outs)]
    if not trimap.is_dir():
        raise DCPError(f"--image is a folder, so --trimap must be a folder too (got {trimap})")
    jobs = []
    for img in io.list_images(image):
        tri = io.find_by_stem(trimap, img.stem)
        if tri is None:
            raise DCPError(f"no trimap for {img.name} in {trimap} (expected {img.stem}.png)")
        jobs.append((img, tri, {k: v / f"{img.stem}.png" for k, v in outs.items()}))
    if not jobs:
        raise DCPError(f"no images in {image}")
    return jobs


def fit_to(background: np.ndarray, h: int, w: int) -> np.ndarray:
    """Scale to cover h x w and centre-crop (no distortion)."""
    bh, bw = background.shape[:2]
    if (bh, bw) == (h, w):
        return background
    scale = max(h / bh, w / bw)
    big = cv2.resize(background, (max(w, round(bw * scale)), max(h, round(bh * scale))), interpolation=cv2.INTER_AREA
                     if scale < 1 else cv2.INTER_CUBIC)
    y0, x0 = (big.shape[0] - h) // 2, (big.shape[1] - w) // 2
    return big[y0:y0 + h, x0:x0 + w]


def _read_pair(img_path: Path, tri_path: Path) -> tuple[np.ndarray, np.ndarray]:
    image, trimap = io.read_rgb(img_path), io.read_trimap(tri_path)
    io.check_same_size(image, trimap, img_path, tri_path)
    return image, trimap


def run(args: argparse.Namespace) -> int:
    if bool(args.background) != bool(args.composite):
        raise DCPError("--background and --composite go together")
    jobs = _jobs(args)
    background = io.read_rgb(args.background) if args.background else None
    device = pick_device(args.device)
    first = _read_pair(*jobs[0][:2])  # bad input fails before the (slow) model load
    model = load_model(args.model, trust_pickle=args.trust_pickle)
    start = time.perf_counter()
    for i, (img_path, tri_path, outs) in enumerate(tqdm(jobs, desc="matte", unit="img", disable=len(jobs) == 1)):
        image, trimap = first if i == 0 else _read_pair(img_path, tri_path)
        alpha = predict(model, image, trimap, device=device, tile=args.tile)
        alpha8 = np.clip(np.rint(alpha * 255), 0, 255).astype(np.uint8)
        io.write_image(outs["alpha"], alpha8)
        if "cutout" in outs or "composite" in outs:
            fg, _ = foreground.estimate_foreground(image, alpha)
            if "cutout" in outs:
                io.write_image(outs["cutout"], foreground.cutout(image, alpha8, fg))
            if "composite" in outs:
                if background.shape[:2] != image.shape[:2]:
                    io.warn_once("bg-fit", f"background {args.background} is scaled and centre-cropped to each image's size")
                bg = fit_to(background, *image.shape[:2])
                io.write_image(outs["composite"], foreground.blend(fg, alpha, bg))
    what = ", ".join(sorted(outs))
    where = args.out if len(jobs) > 1 else outs["alpha"]
    print(f"matted {len(jobs)} image(s) on {device.type} in {time.perf_counter() - start:.1f} s ({what}) -> {where}")
    return 0
