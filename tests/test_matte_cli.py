"""`dcp matte` on real-looking inputs, its refusals, and the inference logic behind it."""
import shutil

import cv2
import numpy as np
import pytest
from torch import nn

import matting
from matting import foreground
from matting.infer import predict
from passes.errors import DCPError

from conftest import DATA

LEMUR, TRIMAP, BEACH = DATA / "lemur_small.png", DATA / "lemur_small_trimap.png", DATA / "beach_small.png"


def _read(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_matte_the_real_photo_with_cutout_and_composite(dcp, tmp_path):
    out, cut, comp = tmp_path / "alpha.png", tmp_path / "cut.png", tmp_path / "comp.png"
    r = dcp("matte", "--model", "dim:0.125", "--image", LEMUR, "--trimap", TRIMAP, "-o", out,
            "--cutout", cut, "--background", BEACH, "--composite", comp, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "quantised" in r.stderr and "RGBA" in r.stderr  # said what it did with the odd inputs
    alpha, raw_trimap = _read(out), _read(TRIMAP)[..., 0]
    assert alpha.shape == (110, 170) and alpha.dtype == np.uint8
    assert (alpha[raw_trimap == 0] == 0).all() and (alpha[raw_trimap == 255] == 255).all()
    assert _read(cut).shape == (110, 170, 4) and _read(comp).shape == (110, 170, 3)
    np.testing.assert_array_equal(_read(cut)[..., 3], alpha)


def test_folder_mode(dcp, tmp_path):
    (tmp_path / "img").mkdir(), (tmp_path / "tri").mkdir()
    for name in ("one", "two"):
        shutil.copy(LEMUR, tmp_path / "img" / f"{name}.png")
        shutil.copy(TRIMAP, tmp_path / "tri" / f"{name}.png")
    r = dcp("matte", "--model", "dim:0.125", "--image", tmp_path / "img", "--trimap", tmp_path / "tri",
            "-o", tmp_path / "out", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["one.png", "two.png"]


def _bad_inputs(tmp_path):
    """Two CLI cases; the other unreadable kinds are covered by the io tests of test_data.py."""
    small_trimap = tmp_path / "small_trimap.png"
    cv2.imwrite(str(small_trimap), np.full((50, 60), 128, np.uint8))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(LEMUR.read_bytes()[:5000])
    return [((LEMUR, small_trimap), "size mismatch"), ((truncated, TRIMAP), "truncated")]


def test_bad_inputs_fail_cleanly_without_output(dcp, tmp_path):
    for (image, trimap), message in _bad_inputs(tmp_path):
        out = tmp_path / "alpha.png"
        r = dcp("matte", "--model", "dim:0.125", "--image", image, "--trimap", trimap, "-o", out, "--device", "cpu")
        assert r.returncode == 2, (message, r.stderr)
        errors = [line for line in r.stderr.splitlines() if "error" in line]
        assert errors == [errors[0]] and message in errors[0] and "Traceback" not in r.stderr
        assert not out.exists() and not list(tmp_path.glob(".alpha*"))


# --- the inference logic (matting.infer, matting.foreground) -----------------------------

class Mean(nn.Module):
    """Alpha = the trimap channel: lets tests check padding, tiling and forcing exactly."""

    def forward(self, x):
        assert x.shape[-1] % 32 == 0 and x.shape[-2] % 32 == 0
        return x[:, 3:4]


def test_any_size_is_padded_and_cropped_back():
    image = np.zeros((37, 71, 3), np.uint8)
    trimap = np.full((37, 71), 128, np.uint8)
    alpha = predict(Mean(), image, trimap, device="cpu")
    assert alpha.shape == (37, 71) and np.allclose(alpha, 128 / 255)


def test_known_regions_are_forced():
    trimap = np.full((32, 32), 128, np.uint8)
    trimap[:5], trimap[-5:] = 0, 255
    alpha = predict(matting.dim(width=0.125), np.zeros((32, 32, 3), np.uint8), trimap, device="cpu")
    assert (alpha[:5] == 0).all() and (alpha[-5:] == 1).all() and ((alpha[5:-5] > 0) & (alpha[5:-5] < 1)).all()


def test_tiles_blend_to_the_whole_image_result():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)
    trimap = rng.choice(np.array([0, 128, 255], np.uint8), size=(90, 130))
    whole = predict(Mean(), image, trimap, device="cpu", tile=0, force=False)
    tiled = predict(Mean(), image, trimap, device="cpu", tile=64, overlap=16, force=False)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


class OOMAbove(nn.Module):
    """Raises the CPU allocator's out-of-memory error for inputs over ``limit`` pixels."""

    def __init__(self, limit):
        super().__init__()
        self.limit, self.sizes = limit, []

    def forward(self, x):
        self.sizes.append(tuple(x.shape[-2:]))
        if x.shape[-1] * x.shape[-2] > self.limit:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't allocate memory")
        return x[:, 3:4]


def test_out_of_memory_falls_back_to_tiles_then_fails_clearly():
    image, trimap = np.zeros((300, 300, 3), np.uint8), np.full((300, 300), 128, np.uint8)
    model = OOMAbove(limit=160 * 160)
    alpha = predict(model, image, trimap, device="cpu")
    assert alpha.shape == (300, 300) and max(h * w for h, w in model.sizes[1:]) <= 160 * 160
    with pytest.raises(DCPError, match="out of memory.*smaller model"):
        predict(OOMAbove(limit=10), image, trimap, device="cpu")
    with pytest.raises(DCPError, match="try a smaller --tile"):
        predict(OOMAbove(limit=10), image, trimap, device="cpu", tile=0)


def test_foreground_estimation_removes_the_background_from_edges():
    from matting.data.synth import make_sample
    s = make_sample(64, seed=4)
    alpha = s["alpha"].astype(np.float32) / 255
    fg, bg = foreground.estimate_foreground(s["image"], alpha)
    edge = (alpha > 0.05) & (alpha < 0.95)
    truth = s["fg"].astype(np.float32) / 255
    naive_error = np.abs(s["image"] / 255 - truth)[edge].mean()
    assert np.abs(fg - truth)[edge].mean() < 0.6 * naive_error
    recomposed = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
    assert np.abs(recomposed - s["image"] / 255).mean() < 0.02
