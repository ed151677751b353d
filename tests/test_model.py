import pytest
import torch

import matting
import passes


def test_teacher_has_the_published_parameter_count():
    assert sum(p.numel() for p in matting.dim().parameters()) == 25_582_595


def test_module_names_match_the_public_checkpoint():
    keys = set(matting.dim().state_dict())
    for key in ("down1.conv1.cbr_unit.0.weight", "down1.conv1.cbr_unit.1.running_var",
                "down5.conv3.cbr_unit.0.bias", "up5.conv.cbr_unit.0.weight", "up1.conv.cbr_unit.1.weight"):
        assert key in keys
    names = dict(matting.dim().named_modules())
    assert isinstance(names["down1.maxpool_with_argmax"], torch.nn.MaxPool2d)
    assert isinstance(names["up5.unpool"], torch.nn.MaxUnpool2d)
    # the decoder convs are 5x5 without ReLU
    assert names["up3.conv.cbr_unit.0"].kernel_size == (5, 5) and len(names["up3.conv.cbr_unit"]) == 2


def test_width_scaling_and_explicit_widths():
    small = matting.dim(width=0.25)
    assert small.down1.conv1.cbr_unit[0].out_channels == 16 and small.down5.conv3.cbr_unit[0].out_channels == 128
    custom = matting.dim(width=0.25, widths={"down3.conv2": 7})
    assert custom.down3.conv2.cbr_unit[0].out_channels == 7 and custom.down3.conv3.cbr_unit[0].in_channels == 7
    with pytest.raises(ValueError, match="unknown layer widths"):
        matting.DIM({"down9.conv1": 3})


@pytest.mark.parametrize("size", [(97, 131), (64, 64), (33, 50)])
def test_traced_equals_eager_at_odd_sizes(size):
    model = matting.dim(width=0.125).eval()
    gm = passes.trace(model, torch.zeros(1, 4, 64, 64))
    x = torch.randn(2, 4, *size)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 1, *size)
        assert torch.equal(gm(x), out)
    assert 0 <= out.min() and out.max() <= 1


def test_three_channel_input_is_a_clear_error():
    with pytest.raises(passes.DCPError, match="expected input.*4 channels"):
        passes.trace(matting.dim(width=0.125), torch.zeros(1, 3, 32, 32))
