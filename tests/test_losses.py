"""The losses of docs/method.md#losses against hand computations and their textbook forms."""
import math

import pytest
import torch

from matting import losses


def test_alpha_loss_by_hand():
    pred = torch.tensor([0.2, 0.9, 0.5, 0.0]).view(1, 1, 2, 2)
    gt = torch.tensor([0.0, 1.0, 0.5, 1.0]).view(1, 1, 2, 2)
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0]).view(1, 1, 2, 2)  # last pixel is not unknown
    eps = 1e-6
    # |0.2| + |0.1| + sqrt(0 + eps^2) + sqrt(0 + eps^2) (the masked pixel still adds eps)
    expected = (math.sqrt(0.04 + eps**2) + math.sqrt(0.01 + eps**2) + 2 * eps) / (3 + eps)
    assert losses.alpha_loss(pred, gt, mask).item() == pytest.approx(expected, rel=1e-6)


def test_unknown_mask_is_the_half_band_of_the_trimap():
    trimap = torch.tensor([0.0, 0.5, 128 / 255, 1.0]).view(1, 1, 1, 4)
    assert losses.unknown_mask(trimap).flatten().tolist() == [0, 1, 1, 0]


def test_composition_loss_is_zero_for_the_true_alpha():
    fg, bg = torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4)
    alpha = torch.rand(1, 1, 4, 4)
    image = alpha * fg + (1 - alpha) * bg
    mask = torch.ones(1, 1, 4, 4)
    assert losses.composition_loss(alpha, fg, bg, image, mask).item() == pytest.approx(1e-6, rel=1e-3)
    assert losses.composition_loss(1 - alpha, fg, bg, image, mask).item() > 1e-3


def test_spkd_terms_by_hand():
    # one image, 2 channels, 2 positions: columns are the positions' channel vectors
    ft = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)   # positions (1,0), (0,1)
    fs = torch.tensor([[1.0, 1.0], [0.0, 1.0]]).view(1, 2, 1, 2)   # positions (1,0), (1,1)
    # spatial: S_t = I; S_s = [[1, 1/sqrt2], [1/sqrt2, 1]] -> mean over 4 entries of (2 * 0.5) = 0.25
    assert losses.spatial_loss(fs, ft).item() == pytest.approx(0.25, abs=1e-6)
    assert losses.spatial_loss_direct(fs, ft).item() == pytest.approx(0.25, abs=1e-6)
    # channel: rows normalised; G_t = I; G_s = [[1, 1/sqrt2], [1/sqrt2, 1]] -> 0.25 too
    assert losses.channel_loss(fs, ft).item() == pytest.approx(0.25, abs=1e-6)
    assert losses.spkd_loss([fs], [ft]).item() == pytest.approx(0.5, abs=1e-6)
    assert losses.spkd_loss([fs], [ft], weights=(1.0, 0.0)).item() == pytest.approx(0.25, abs=1e-6)


@pytest.mark.parametrize("cs,ct,hw", [(8, 8, (5, 7)), (3, 16, (12, 12)), (128, 128, (40, 40))])
def test_gram_form_of_the_spatial_term_equals_the_direct_one(cs, ct, hw):
    fs = torch.randn(2, cs, *hw, requires_grad=True)
    ft = torch.relu(torch.randn(2, ct, *hw))
    fast, direct = losses.spatial_loss(fs, ft), losses.spatial_loss_direct(fs, ft)
    assert fast.item() == pytest.approx(direct.item(), rel=1e-4, abs=1e-7)
    g_fast, = torch.autograd.grad(fast, fs)
    g_direct, = torch.autograd.grad(direct, fs)
    assert torch.allclose(g_fast, g_direct, rtol=1e-3, atol=1e-9 + 1e-4 * g_direct.abs().max().item())


@pytest.mark.parametrize("noise", [1e-1, 1e-2, 1e-3])
def test_gram_form_stays_accurate_when_student_and_teacher_nearly_agree(noise):
    # the three Gram terms cancel to a tiny loss: float32 arithmetic would be far off here
    ft = torch.relu(torch.randn(1, 64, 30, 30) + 0.5)
    fs = ft + noise * torch.randn_like(ft)
    ref = losses.spatial_loss_direct(fs.double(), ft.double()).item()
    assert losses.spatial_loss(fs, ft).item() == pytest.approx(ref, rel=1e-3)


def test_spatial_term_of_identical_features_is_zero():
    f = torch.randn(1, 64, 20, 20)
    assert losses.spatial_loss(f, f).item() == pytest.approx(0.0, abs=1e-9)


def test_spkd_sums_all_layers_not_only_the_last():
    feats_s = [torch.randn(1, c, s, s) for c, s in ((4, 8), (8, 4), (16, 2))]
    feats_t = [torch.randn(1, c, s, s) for c, s in ((4, 8), (8, 4), (16, 2))]
    per_layer = [losses.spatial_loss_direct(a, b) + losses.channel_loss(a, b) for a, b in zip(feats_s, feats_t)]
    total = losses.spkd_loss(feats_s, feats_t)
    assert total.item() == pytest.approx(sum(per_layer).item(), rel=1e-5)
    assert total.item() > per_layer[-1].item() * 1.01


def test_narrower_student_needs_adapters_for_the_channel_term():
    fs, ft = torch.randn(1, 4, 6, 6, requires_grad=True), torch.randn(1, 8, 6, 6)
    with pytest.raises(ValueError, match="adapters"):
        losses.spkd_loss([fs], [ft])
    adapters = losses.make_adapters([4], [8])
    assert adapters[0].weight.shape == (8, 4, 1, 1) and adapters[0].bias is None
    loss = losses.spkd_loss([fs], [ft], adapters=adapters)
    loss.backward()
    assert adapters[0].weight.grad.abs().sum() > 0 and fs.grad.abs().sum() > 0
    assert isinstance(losses.make_adapters([8], [8])[0], torch.nn.Identity)


def test_teacher_features_get_no_gradient():
    fs, ft = torch.randn(1, 4, 3, 3, requires_grad=True), torch.randn(1, 4, 3, 3, requires_grad=True)
    losses.spkd_loss([fs], [ft]).backward()
    assert ft.grad is None and fs.grad is not None
