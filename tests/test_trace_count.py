import pytest
import torch
from torch import nn

import matting
import passes


def test_every_node_carries_shape_metadata_with_tuples_for_pool_indices():
    gm = passes.trace(matting.dim(width=0.125), torch.zeros(1, 4, 64, 48))
    for n in gm.graph.nodes:
        if n.op != "output":
            assert "tensor_meta" in n.meta and "type" in n.meta, n.name
    pool = next(n for n in gm.graph.nodes if n.target == "down1.maxpool_with_argmax")
    values, indices = pool.meta["tensor_meta"]
    assert tuple(values.shape) == (1, 8, 32, 24) and indices.dtype == torch.int64
    size = next(n for n in gm.graph.nodes if n.op == "call_method" and n.target == "size")
    assert size.meta["type"] is torch.Size and tuple(size.meta["val"]) == (1, 8, 64, 48)


def test_shape_propagation_runs_no_real_forward():
    # a 4096x4096 full-width DIM forward would need ~30 GB: fake tensors need none
    gm = passes.trace(matting.dim(), torch.empty(1, 4, 4096, 4096))
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    assert tuple(out.meta["tensor_meta"].shape) == (1, 1, 4096, 4096)


@pytest.mark.parametrize("size,gmacs", [(224, 24.45), (320, 49.89), (640, 199.6)])
def test_dim_macs_match_the_published_counts(size, gmacs):
    params, macs = passes.count(matting.dim(), torch.zeros(1, 4, size, size))
    assert params == 25_582_595
    assert macs / 1e9 == pytest.approx(gmacs, rel=0.005)


def test_untraceable_model_error_names_the_module_and_the_workaround():
    class DataDependent(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    model = nn.Sequential(nn.Conv2d(1, 2, 1), DataDependent())
    with pytest.raises(passes.DCPError, match="DataDependent.forward.*leaf_modules"):
        passes.trace(model, torch.zeros(1, 1, 4, 4))
    gm = passes.trace(model, torch.zeros(1, 1, 4, 4), leaf_modules=(DataDependent,))
    assert any(n.target == "1" for n in gm.graph.nodes)


def test_tensor_or_tuple_example_inputs():
    m = nn.Conv2d(3, 4, 3)
    assert passes.count(m, torch.zeros(1, 3, 8, 8)) == passes.count(m, (torch.zeros(1, 3, 8, 8),))


def test_traced_module_keeps_the_models_forward_signature():
    # torch.export matches dynamic_shapes to forward()'s parameters (a lazily compiled
    # GraphModule has forward(*args, **kwargs) and fails there)
    import inspect

    gm = passes.trace(nn.Sequential(nn.Conv2d(3, 4, 3)), torch.zeros(1, 3, 8, 8))
    assert list(inspect.signature(gm.forward).parameters) == ["input"]
