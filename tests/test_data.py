"""Image IO, training transforms (trimap bug fixed), the data-set folder Dataset, Composition-1k."""
import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from matting.data import AdobeLayout, AdobeTrain, MattingFolder, adobe, io, transforms
from matting.data import test_set_items as list_test_set
from matting.data.synth import make_sample, write_synth
from passes.errors import DCPError

from conftest import DATA


@pytest.fixture(autouse=True)
def _fresh_warnings():
    io._warned.clear()


def _png(path, arr):
    cv2.imwrite(str(path), arr)
    return path


# --- io ---------------------------------------------------------------------------------

def test_rgba_gray_and_16bit_images_are_converted_with_a_warning(tmp_path, capsys):
    rgba = io.read_rgb(DATA / "lemur_small.png")
    assert rgba.shape == (110, 170, 3) and rgba.dtype == np.uint8
    gray = io.read_rgb(_png(tmp_path / "g.png", np.full((5, 6), 77, np.uint8)))
    assert gray.shape == (5, 6, 3) and (gray == 77).all()
    deep = io.read_rgb(_png(tmp_path / "d.png", np.full((5, 6, 3), 65535, np.uint16)))
    assert deep.dtype == np.uint8 and (deep == 255).all()
    err = capsys.readouterr().err
    assert "RGBA" in err and "grayscale" in err and "16-bit" in err


def test_bgr_on_disk_is_rgb_in_memory(tmp_path):
    bgr = np.zeros((2, 2, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's order
    assert (io.read_rgb(_png(tmp_path / "r.png", bgr))[..., 0] == 200).all()


def test_hand_drawn_trimap_is_quantised(capsys):
    raw = cv2.imread(str(DATA / "lemur_small_trimap.png"), cv2.IMREAD_UNCHANGED)
    assert raw.shape[2] == 4 and 102 in raw
    trimap = io.read_trimap(DATA / "lemur_small_trimap.png")
    assert set(np.unique(trimap)) == {0, 128, 255}
    np.testing.assert_array_equal(trimap == 128, raw[..., 0] == 102)
    assert "quantised" in capsys.readouterr().err


def test_quantise_thresholds():
    t = np.array([0, 84, 85, 128, 170, 171, 255], np.uint8)
    np.testing.assert_array_equal(io.quantise_trimap(t), [0, 0, 128, 128, 128, 255, 255])


@pytest.mark.parametrize("content, match", [(b"", "not an image"), (b"hello", "not an image"), (None, "truncated")])
def test_unreadable_files_give_one_clear_error(tmp_path, content, match):
    path = tmp_path / "bad.png"
    if content is None:  # a real PNG cut in half
        content = cv2.imencode(".png", np.arange(3000, dtype=np.uint8).reshape(50, 60))[1].tobytes()
        content = content[: len(content) // 2]
    path.write_bytes(content)
    with pytest.raises(DCPError, match=match):
        io.read_rgb(path)
    with pytest.raises(DCPError, match="no such file"):
        io.read_trimap(tmp_path / "missing.png")


def test_colour_trimap_is_refused(tmp_path):
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[..., 1] = 128
    with pytest.raises(DCPError, match="colour channels differ"):
        io.read_trimap(_png(tmp_path / "t.png", colour))


def test_write_image_is_atomic_and_round_trips(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 256, (7, 9, 4), dtype=np.uint8)
    io.write_image(tmp_path / "x.png", rgba)
    back = cv2.imread(str(tmp_path / "x.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(back[..., [2, 1, 0, 3]], rgba)
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]  # no temp file left


# --- transforms -------------------------------------------------------------------------

def _disc(size=64, r=16):
    alpha = np.zeros((size, size), np.uint8)
    cv2.circle(alpha, (size // 2, size // 2), r, 255, -1)
    return cv2.GaussianBlur(alpha, (5, 5), 1)


def test_training_trimap_really_applies_the_iterations():
    alpha = _disc()
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    one = transforms._trimap(alpha, kernel, 1)
    ten = transforms._trimap(alpha, kernel, 10)
    # the public bug made every band one iteration wide
    assert (ten == 128).sum() > 3 * (one == 128).sum()
    dilated = alpha
    for _ in range(10):
        dilated = cv2.dilate(dilated, kernel)
    np.testing.assert_array_equal(ten == 0, dilated == 0)


def test_random_trimap_band_follows_its_configured_range():
    alpha = _disc()
    rng = np.random.default_rng(0)
    narrow = [(transforms.random_trimap(alpha, rng, (3, 4), (1, 2)) == 128).sum() for _ in range(5)]
    wide = [(transforms.random_trimap(alpha, rng, (3, 4), (8, 9)) == 128).sum() for _ in range(5)]
    assert len(set(narrow)) == 1 and min(wide) > 2 * max(narrow)


def test_crop_is_centred_on_unknown_and_resized():
    s = make_sample(96, seed=1)
    rng = np.random.default_rng(0)
    out = transforms.crop_around_unknown(dict(s), s["trimap"], 32, rng, scales=(1.0, 2.0))
    assert all(a.shape[:2] == (32, 32) for a in out.values())
    assert (out["trimap"] == 128).any()


def test_model_input_is_imagenet_normalised_plus_trimap():
    img = np.full((2, 3, 3), 255, np.uint8)
    tri = np.array([[0, 128, 255], [0, 0, 0]], np.uint8)
    x = transforms.model_input(img, tri)
    assert x.shape == (4, 2, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[:3, 0, 0], (1 - transforms.IMAGENET_MEAN) / transforms.IMAGENET_STD, rtol=1e-6)
    np.testing.assert_allclose(x[3, 0], [0, 128 / 255, 1], rtol=1e-6)


# --- the data-set folder ------------------------------------------------------------------

@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    return write_synth(tmp_path_factory.mktemp("d") / "syn", 4, 48, seed=2)


def test_folder_test_items_are_full_images(synth_dir):
    ds = MattingFolder(synth_dir)
    item = ds[1]
    assert len(ds) == 4 and item["name"] == "00001"
    assert item["input"].shape == (4, 48, 48) and item["alpha"].shape == (1, 48, 48)
    assert item["fg"].shape == item["bg"].shape == item["image"].shape == (3, 48, 48)
    s = make_sample(48, seed=2, index=1)
    np.testing.assert_allclose(item["alpha"][0].numpy(), s["alpha"] / 255, atol=1e-6)
    torch.testing.assert_close(item["mask"], (item["trimap"] == 128 / 255).float())
    torch.testing.assert_close(item["input"][3:], item["trimap"])


def test_folder_train_items_are_random_crops_reproducible_by_seed(synth_dir):
    ds = MattingFolder(synth_dir, crop=32, train=True, seed=3, trimap_iterations=(1, 3))
    a, b = ds[0], ds[0]
    assert a["input"].shape == (4, 32, 32)
    torch.testing.assert_close(a["input"], b["input"])
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["input"], a["input"])
    assert a["mask"].sum() > 0


def test_folder_loads_in_dataloader_workers(synth_dir):
    loader = DataLoader(MattingFolder(synth_dir, crop=32, train=True), batch_size=2, num_workers=2)
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["input"].shape == (2, 4, 32, 32)


def test_folder_reads_a_split(synth_dir):
    (synth_dir / "valid.txt").write_text("00002\n00000\n")
    assert MattingFolder(synth_dir, split="valid").names == ["00002", "00000"]
    with pytest.raises(DCPError, match="dcp data split"):
        MattingFolder(synth_dir, split="nope")


def test_not_a_data_folder(tmp_path):
    with pytest.raises(DCPError, match="not a data-set folder"):
        MattingFolder(tmp_path)


# --- Composition-1k -----------------------------------------------------------------------

@pytest.fixture
def adobe_dir(tmp_path):
    """2 foregrounds (40x30), 4 backgrounds (two smaller than the fg), the official lists."""
    rng = np.random.default_rng(0)
    for d in ("fg", "alpha", "bg"):
        (tmp_path / d).mkdir()
    for name in ("a.png", "b b.png"):
        _png(tmp_path / "fg" / name, rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
        _png(tmp_path / "alpha" / name, cv2.resize(_disc(64, 20), (40, 30)))
    for i, shape in enumerate([(20, 20), (60, 80), (30, 40), (10, 50)]):
        _png(tmp_path / "bg" / f"bg{i}.jpg", rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
    (tmp_path / "fg_names.txt").write_text("a.png\nb b.png\n")
    (tmp_path / "bg_names.txt").write_text("".join(f"bg{i}.jpg\n" for i in range(4)))
    return tmp_path


def _layout(d):
    return AdobeLayout(d / "fg", d / "alpha", d / "bg", d / "fg_names.txt", d / "bg_names.txt")


def test_pairs_follow_the_official_order(adobe_dir):
    assert _layout(adobe_dir).pairs(2) == [("a.png", "bg0.jpg"), ("a.png", "bg1.jpg"),
                                           ("b b.png", "bg2.jpg"), ("b b.png", "bg3.jpg")]
    with pytest.raises(DCPError, match="need 6 background names"):
        _layout(adobe_dir).pairs(3)


def test_split_is_seeded_and_complete():
    items = list(range(100))
    train, val = adobe.split_pairs(items, 0.2, seed=7)
    assert len(val) == 20 and sorted(train + val) == items
    assert adobe.split_pairs(items, 0.2, seed=7) == (train, val)
    assert adobe.split_pairs(items, 0.2, seed=8)[1] != val


def test_test_composite_fits_small_backgrounds():
    fg = np.full((30, 40, 3), 200, np.uint8)
    alpha = np.full((30, 40), 51, np.uint8)
    bg = np.full((10, 50, 3), 100, np.uint8)  # too short: upscaled to cover, cropped at top-left
    out = adobe.composite_test(fg, alpha, bg)
    assert out.shape == (30, 40, 3) and (out == int(0.2 * 200 + 0.8 * 100)).all()


def test_adobe_train_items(adobe_dir):
    ds = AdobeTrain(_layout(adobe_dir), _layout(adobe_dir).pairs(2), crop=16, seed=0, trimap_iterations=(1, 3))
    item = ds[3]
    assert len(ds) == 4 and item["input"].shape == (4, 16, 16) and item["fg"].shape == (3, 16, 16)
    recomposed = item["alpha"] * item["fg"] + (1 - item["alpha"]) * item["bg"]
    assert (recomposed - item["image"]).abs().max() < 0.15  # colour jitter moves it a little


def test_composite_and_split_cli(dcp, adobe_dir):
    d = adobe_dir
    r = dcp("data", "composite", "--fg", d / "fg", "--alpha", d / "alpha", "--bg", d / "bg", "--fg-names",
            d / "fg_names.txt", "--bg-names", d / "bg_names.txt", "--per-fg", "2", "--band", "3", "--out", d / "test")
    assert r.returncode == 0, r.stderr
    items = list_test_set(d / "test")
    assert [n for n, *_ in items] == ["a_0", "a_1", "b b_0", "b b_1"]
    r = dcp("data", "split", "--fg-names", d / "fg_names.txt", "--bg-names", d / "bg_names.txt",
            "--per-fg", "2", "--val", "0.5", "--out", d / "split")
    assert r.returncode == 0, r.stderr
    train, val = adobe.read_pairs(d / "split" / "train.txt"), adobe.read_pairs(d / "split" / "valid.txt")
    assert len(train) == len(val) == 2 and sorted(train + val) == sorted(_layout(d).pairs(2))


def test_official_test_layout_with_per_foreground_alphas(tmp_path):
    for sub in ("merged", "alpha", "trimaps"):
        (tmp_path / sub).mkdir()
    img = np.zeros((8, 8, 3), np.uint8)
    for j in range(2):
        _png(tmp_path / "merged" / f"cat_{j}.png", img)
        _png(tmp_path / "trimaps" / f"cat_{j}.png", img[..., 0])
    _png(tmp_path / "alpha" / "cat.png", img[..., 0])
    items = list_test_set(tmp_path)
    assert [(n, a.name) for n, _, _, a in items] == [("cat_0", "cat.png"), ("cat_1", "cat.png")]


def test_default_training_band_scales_with_the_crop(synth_dir):
    small = MattingFolder(synth_dir, crop=32, train=True, seed=0)
    unknown = np.mean([small[i]["mask"].mean().item() for i in range(4)])
    assert 0.05 < unknown < 0.95  # the (1, 20) iterations meant for 320 px would make it all unknown
