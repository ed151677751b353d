"""passes.fold_bn: eval-mode BN folded into the conv before it, only where that is exact."""
import pytest
import torch
from torch import nn

import compiler
import matting
from passes.fold_bn import fold_bn


def randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, as after training."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    return model.eval()


def assert_close(a, b, tol=1e-5):
    err = (a - b).abs().max().item()
    assert err <= tol, err


def test_folded_dim_equals_the_original_and_has_no_bn():
    model = randomise_bn(matting.dim(width=0.125))
    folded = fold_bn(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert len(folded.meta["folded_bn"]) == 18
    assert folded.meta["folded_bn"]["down1.conv1.cbr_unit.1"] == "down1.conv1.cbr_unit.0"
    x = torch.randn(2, 4, 97, 131)
    with torch.no_grad():
        assert_close(folded(x), model(x), tol=1e-4)  # fp32 rounding through 18 layers
        # in float64 the fold is exact up to rounding: the algebra, not the tolerance, is tested
        assert_close(fold_bn(model.double())(x.double()), model(x.double()), tol=1e-10)
        model.float()
    # the convs keep their qualified names (plans and reports read against the teacher)
    assert isinstance(folded.get_submodule("up1.conv.cbr_unit.0"), nn.Conv2d)
    assert isinstance(model.up1.conv.cbr_unit[1], nn.BatchNorm2d)  # original untouched


def test_folds_a_compiled_artifact(tmp_path):
    model = randomise_bn(matting.dim(width=0.0625))
    compiler.save_module(model, tmp_path / "art")
    loaded = compiler.load(tmp_path / "art").eval()
    folded = fold_bn(loaded)
    x = torch.randn(1, 4, 48, 40)
    with torch.no_grad():
        assert_close(folded(x), model(x))
    assert len(folded.meta["folded_bn"]) == 18


def test_bias_free_conv_gains_a_bias():
    m = randomise_bn(nn.Sequential(nn.Conv2d(3, 5, 3, bias=False), nn.BatchNorm2d(5)))
    folded = fold_bn(m)
    assert folded.get_submodule("0").bias is not None
    x = torch.randn(1, 3, 7, 7)
    assert_close(folded(x), m(x))


def test_training_mode_bn_is_not_folded():
    m = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5)).train()
    assert fold_bn(m).meta["folded_bn"] == {}


def test_conv_with_another_user_is_not_folded():
    class Branch(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # folding would change the second use of y

    m = randomise_bn(Branch())
    folded = fold_bn(m)
    assert folded.meta["folded_bn"] == {}
    x = torch.randn(1, 3, 5, 5)
    assert torch.equal(folded(x), m(x))


def test_shared_conv_is_not_folded():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(self.conv(x)) + self.conv(x * 2)

    m = randomise_bn(Shared())
    folded = fold_bn(m)
    assert folded.meta["folded_bn"] == {}
    x = torch.randn(1, 3, 5, 5)
    assert torch.equal(folded(x), m(x))


@pytest.mark.parametrize("inplace", [False, True])
def test_inplace_flag(inplace):
    gm = torch.fx.symbolic_trace(randomise_bn(nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5))))
    out = fold_bn(gm, inplace=inplace)
    assert (out is gm) == inplace
    assert any(isinstance(m, nn.BatchNorm2d) for m in gm.modules()) != inplace
