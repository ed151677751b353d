"""`dcp eval`: per-image CSV + summary on a synthetic or Composition-1k-layout test set."""
import csv
import json
import shutil

import cv2
import numpy as np
import pytest

from matting import metrics
from matting.data.synth import write_synth


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    return write_synth(tmp_path_factory.mktemp("e") / "syn", 3, 40, seed=9)


def test_eval_writes_per_image_csv_and_summary(dcp, synth_dir, tmp_path):
    out_csv, out_json, alphas = tmp_path / "r.csv", tmp_path / "r.json", tmp_path / "alphas"
    r = dcp("eval", "--model", "dim:0.125", "--data", synth_dir, "--csv", out_csv, "--json", out_json,
            "--save-alpha", alphas, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "| SAD | MSE (x1e-3) | Grad | Conn |" in r.stdout and "3 images" in r.stdout
    with open(out_csv) as f:
        rows = list(csv.DictReader(f))
    assert [row["name"] for row in rows] == ["00000", "00001", "00002"]
    # every number is the official metric of the saved prediction against the ground truth
    for row in rows:
        pred = cv2.imread(str(alphas / f"{row['name']}.png"), cv2.IMREAD_UNCHANGED)
        gt = cv2.imread(str(synth_dir / "alpha" / f"{row['name']}.png"), cv2.IMREAD_UNCHANGED)
        trimap = cv2.imread(str(synth_dir / "trimap" / f"{row['name']}.png"), cv2.IMREAD_UNCHANGED)
        for name in metrics.METRICS:
            assert float(row[name]) == pytest.approx(getattr(metrics, name)(pred, gt, trimap), rel=1e-9)
    summary = json.loads(out_json.read_text())
    assert summary["n"] == 3 and summary["sad"] == pytest.approx(np.mean([float(r["sad"]) for r in rows]))


def test_eval_reads_the_composition1k_layout_and_refuses_other_folders(dcp, synth_dir, tmp_path):
    comp = tmp_path / "Test_set"
    for src, dst in (("image", "merged"), ("trimap", "trimaps")):
        shutil.copytree(synth_dir / src, comp / dst)
    (comp / "alpha").mkdir()
    for p in (synth_dir / "alpha").iterdir():  # (per-foreground alpha names: see test_data.py)
        shutil.copy(p, comp / "alpha" / p.name)
    r = dcp("eval", "--model", "dim:0.125", "--data", comp, "--csv", tmp_path / "c.csv", "--limit", "2",
            "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "2 images" in r.stdout
    bad = dcp("eval", "--model", "dim:0.125", "--data", tmp_path / "nowhere", "--csv", tmp_path / "x.csv")
    assert bad.returncode == 2 and "no such data folder" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x.csv").exists()
