"""The Composition-1k metrics against the official MATLAB definitions (docs/method.md#metrics)."""
import csv
import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from matting import metrics

from conftest import DATA

GOLDEN = DATA / "golden"


def _golden_cases():
    with open(GOLDEN / "golden.csv") as f:
        return list(csv.DictReader(f))


def _read(case, kind):
    return cv2.imread(str(GOLDEN / f"{case}_{kind}.png"), cv2.IMREAD_UNCHANGED)


@pytest.mark.parametrize("row", _golden_cases(), ids=lambda r: r["case"])
@pytest.mark.parametrize("name", metrics.METRICS)
def test_matches_the_official_matlab_code(row, name):
    pred, gt, trimap = (_read(row["case"], k) for k in ("pred", "gt", "trimap"))
    assert pred.dtype == np.uint8 and pred.ndim == 2
    assert getattr(metrics, name)(pred, gt, trimap) == pytest.approx(float(row[name]), rel=1e-6)


def test_tie_case_takes_the_column_major_first_component():
    # Row-major labelers pick the other component and give ~0.0026 (golden README).
    pred, gt, trimap = (_read("pub_tie", k) for k in ("pred", "gt", "trimap"))
    assert metrics.conn(pred, gt, trimap) == pytest.approx(0.0021960781887, rel=1e-6)


def test_sad_and_mse_by_hand():
    gt = np.array([[0, 255], [128, 10]], np.uint8)
    pred = np.array([[51, 255], [0, 10]], np.uint8)
    trimap = np.array([[128, 128], [255, 128]], np.uint8)  # the 128-vs-0 pixel is known: ignored
    assert metrics.sad(pred, gt, trimap) == pytest.approx(51 / 255 / 1000, rel=1e-6)
    assert metrics.mse(pred, gt, trimap) == pytest.approx((51 / 255) ** 2 / 3, rel=1e-6)


def test_conn_by_hand():
    # gt opaque; pred has one hole. Omega = the 2-pixel run at every threshold, so the hole and
    # the isolated pixel get l = 0 and the run keeps l = 1; only the hole differs:
    # phi_p = 1 - 0 = 1, phi_g = 1 - 1 = 0.
    gt = np.full((1, 4), 255, np.uint8)
    pred = np.array([[255, 255, 0, 255]], np.uint8)
    trimap = np.full((1, 4), 128, np.uint8)
    assert metrics.conn(pred, gt, trimap) == pytest.approx(1 / 1000, rel=1e-6)


def test_thresholds_are_rounded():
    t = metrics.conn_thresholds(0.1)
    assert len(t) == 11 and t[6] == 0.6 and np.arange(0, 1.1, 0.1)[6] > 0.6
    # alpha 153/255 == 0.6 must pass the 0.6 threshold (the float pitfall would drop it)
    assert metrics._first_level_at_least(t[6]) == 153


def test_grad_kernel_equals_the_formula():
    sigma = 1.4
    half = math.ceil(sigma * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * sigma * 0.01)))
    assert half == 4
    gauss = lambda x: math.exp(-x * x / (2 * sigma ** 2)) / (sigma * math.sqrt(2 * math.pi))  # noqa: E731
    dgauss = lambda x: -x * gauss(x) / sigma ** 2  # noqa: E731
    hx = np.array([[gauss(i - half) * dgauss(j - half) for j in range(2 * half + 1)] for i in range(2 * half + 1)])
    hx /= math.sqrt((hx ** 2).sum())
    np.testing.assert_allclose(metrics.gauss_gradient_kernel(sigma), hx, rtol=1e-12)


def test_separable_gradient_equals_the_full_kernel_convolution():
    rng = np.random.default_rng(0)
    img = rng.random((23, 31))
    hx = metrics.gauss_gradient_kernel(1.4)
    # imfilter(..., 'replicate', 'conv') == correlation with the flipped kernel, replicated border
    conv = lambda k: cv2.filter2D(img, cv2.CV_64F, k[::-1, ::-1].copy(), borderType=cv2.BORDER_REPLICATE)  # noqa: E731
    expected = np.sqrt(conv(hx) ** 2 + conv(hx.T) ** 2)
    np.testing.assert_allclose(metrics._gradient_magnitude(img.astype(np.float32), 1.4), expected, atol=1e-5)


alphas = arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12)))


@settings(max_examples=40, deadline=None)
@given(alphas, st.integers(0, 2**32 - 1))
def test_identical_inputs_score_zero(alpha, seed):
    trimap = np.random.default_rng(seed).choice(np.array([0, 128, 255], np.uint8), size=alpha.shape)
    for name in metrics.METRICS:
        assert getattr(metrics, name)(alpha, alpha, trimap) == 0.0


@settings(max_examples=40, deadline=None)
@given(alphas, st.integers(0, 2**32 - 1))
def test_only_the_unknown_region_counts(gt, seed):
    rng = np.random.default_rng(seed)
    pred = rng.integers(0, 256, gt.shape).astype(np.uint8)
    trimap = rng.choice(np.array([0, 128, 255], np.uint8), size=gt.shape)
    # Changing pred where the trimap is known changes nothing for SAD/MSE (local metrics).
    pred2 = np.where(trimap == 128, pred, 255 - pred).astype(np.uint8)
    assert metrics.sad(pred, gt, trimap) == pytest.approx(metrics.sad(pred2, gt, trimap))
    assert metrics.mse(pred, gt, trimap) == pytest.approx(metrics.mse(pred2, gt, trimap))
    for name in metrics.METRICS:
        value = getattr(metrics, name)(pred, gt, trimap)
        assert value >= 0
        if not (trimap == 128).any():
            assert value == 0


def test_a_better_prediction_scores_better_on_every_metric():
    from matting.data.synth import make_sample
    s = make_sample(96, seed=3, index=0)
    gt, trimap = s["alpha"], s["trimap"]
    good = metrics.to_uint8(cv2.GaussianBlur(gt.astype(np.float32) / 255, (0, 0), 0.7))
    flat = np.where(trimap == 128, 128, gt).astype(np.uint8)  # the trimap alone
    for name in metrics.METRICS:
        f = getattr(metrics, name)
        assert f(good, gt, trimap) < 0.5 * f(flat, gt, trimap), name


def test_bad_inputs_are_refused():
    a = np.zeros((4, 4), np.uint8)
    with pytest.raises(TypeError, match="to_uint8"):
        metrics.sad(a.astype(np.float32), a, a)
    with pytest.raises(ValueError, match="one shape"):
        metrics.mse(a, np.zeros((4, 5), np.uint8), a)


def test_to_uint8_rounds_and_clips():
    np.testing.assert_array_equal(metrics.to_uint8(np.array([-1, 0.5, 0.999, 2])), [0, 128, 255, 255])


def test_component_areas_agree_on_both_counting_paths():
    mask = np.random.default_rng(1).random((60, 70)) > 0.5
    n, labels = cv2.connectedComponentsWithAlgorithm(mask.view(np.uint8), 4, cv2.CV_32S, cv2.CCL_DEFAULT)
    np.testing.assert_array_equal(metrics._areas(labels, n), np.bincount(labels.ravel(), minlength=n)[1:])
