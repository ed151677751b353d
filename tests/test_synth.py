"""The built-in synthetic data set: real matting structure, deterministic by seed, `dcp data synth`."""
import json

import cv2
import numpy as np

from matting.data import synth
from matting.data.synth import make_sample


def test_deterministic_by_seed_and_index():
    a, b = make_sample(48, seed=5, index=2), make_sample(48, seed=5, index=2)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["alpha"], make_sample(48, seed=6, index=2)["alpha"])
    assert not np.array_equal(a["alpha"], make_sample(48, seed=5, index=3)["alpha"])


def test_image_is_the_composite_of_fg_bg_alpha():
    s = make_sample(64, seed=1)
    a = s["alpha"].astype(np.float64)[..., None] / 255
    expected = a * s["fg"] + (1 - a) * s["bg"]
    assert np.abs(s["image"] - expected).max() <= 0.5 + 1e-6
    assert s["image"].shape == (64, 64, 3) and s["alpha"].shape == (64, 64)


def test_trimap_is_consistent_with_alpha():
    for i in range(4):
        s = make_sample(64, seed=2, index=i)
        alpha, trimap = s["alpha"], s["trimap"]
        assert set(np.unique(trimap)) <= {0, 128, 255}
        assert (trimap[(alpha > 0) & (alpha < 255)] == 128).all()  # every partial pixel is unknown
        assert (alpha[trimap == 255] == 255).all() and (alpha[trimap == 0] == 0).all()
        assert 0.05 < (trimap == 128).mean() < 0.9


def test_alpha_has_matting_structure():
    stats = []
    for i in range(8):
        alpha = make_sample(128, seed=0, index=i)["alpha"].astype(np.float32) / 255
        stats.append({"opaque": (alpha == 1).mean(), "partial": ((alpha > 0) & (alpha < 1)).mean(),
                      "mid": ((alpha > 0.2) & (alpha < 0.8)).mean()})
    assert all(s["opaque"] > 0.02 for s in stats)        # a solid body
    assert all(s["partial"] > 0.03 for s in stats)       # soft boundaries everywhere
    assert np.mean([s["mid"] for s in stats]) > 0.02     # semi-transparent regions, not just edges


def test_strands_are_thin_and_partial():
    rng = np.random.default_rng(0)
    body = synth._body((128, 128), rng)
    strands = synth._strands((128, 128), body, rng)
    hair = (strands > 0.05).astype(np.uint8)
    assert hair.sum() > 100
    assert strands.max() < 1.0 and np.median(strands[hair > 0]) < 0.6  # sub-pixel: partial coverage
    # thin: a 3x3 erosion removes nearly all of them
    assert cv2.erode(hair, np.ones((3, 3), np.uint8)).sum() < 0.2 * hair.sum()


def test_holes_cut_into_the_body():
    found = 0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        body = synth._body((96, 96), rng)
        holes = synth._holes((96, 96), body, rng)
        found += int(((body > 0.99) & (holes < 0.05)).sum() > 5)
    assert found >= 2


def test_cli_writes_the_layout(dcp, tmp_path):
    out = tmp_path / "syn"
    r = dcp("data", "synth", "--out", out, "-n", "3", "--size", "40", "--seed", "4")
    assert r.returncode == 0, r.stderr
    for key in ("image", "fg", "bg", "alpha", "trimap"):
        assert sorted(p.name for p in (out / key).iterdir()) == ["00000.png", "00001.png", "00002.png"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["names"] == ["00000", "00001", "00002"] and meta["seed"] == 4 and meta["size"] == 40
    alpha = cv2.imread(str(out / "alpha" / "00001.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(alpha, make_sample(40, seed=4, index=1)["alpha"])

    again = dcp("data", "synth", "--out", out, "-n", "2", "--size", "40")
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    assert len(list((out / "image").iterdir())) == 3  # untouched
    forced = dcp("data", "synth", "--out", out, "-n", "2", "--size", "40", "--force")
    assert forced.returncode == 0 and len(list((out / "image").iterdir())) == 2


def test_cli_rejects_bad_sizes(dcp, tmp_path):
    r = dcp("data", "synth", "--out", tmp_path / "x", "-n", "0")
    assert r.returncode == 2 and "Traceback" not in r.stderr and not (tmp_path / "x").exists()
