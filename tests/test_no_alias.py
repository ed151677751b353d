"""compiler.compile returns a model that shares no storage and no module with its input, and
leaves the input bit-identical and in its own train/eval modes."""
import pytest
import torch
from torch import nn

import compiler
import matting
from matting.losses import alpha_loss
from tests_helpers import randomise_bn


def storages(module: nn.Module) -> dict[int, str]:
    return {t.untyped_storage().data_ptr(): name for name, t in
            [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]
            if t.numel()}


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_identical(module: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = module.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), k


def assert_shares_nothing(compact: nn.Module, original: nn.Module) -> None:
    shared = storages(compact).keys() & storages(original).keys()
    assert not shared, sorted(storages(compact)[p] for p in shared)
    assert not {id(m) for m in compact.modules()} & {id(m) for m in original.modules()}


@pytest.fixture()
def teacher():
    return randomise_bn(matting.dim(width=0.25), seed=1).eval()


def test_the_compact_dim_shares_no_storage_and_no_module_with_the_teacher(teacher):
    before = snapshot(teacher)
    res = compiler.compile(teacher, torch.randn(1, 4, 64, 64), ratio=0.5)
    assert_shares_nothing(res.module, teacher)
    assert_identical(teacher, before)
    unpruned = res.module.get_submodule("down5.conv1.cbr_unit.0")  # pruned on no side? still a copy
    assert unpruned is not teacher.get_submodule("down5.conv1.cbr_unit.0")


def test_training_the_compact_model_leaves_the_teacher_bit_identical(teacher):
    res = compiler.compile(teacher, torch.randn(1, 4, 64, 64), ratio=0.5)
    before = snapshot(teacher)
    student = res.module.train()
    optimiser = torch.optim.SGD(student.parameters(), lr=0.1)
    x, gt = torch.randn(2, 4, 64, 64), torch.rand(2, 1, 64, 64)
    loss = alpha_loss(student(x), gt, torch.ones_like(gt))
    loss.backward()
    optimiser.step()
    assert all(p.grad is not None for p in student.parameters())
    assert_identical(teacher, before)
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training and all(not m.training for m in teacher.modules())


def test_a_training_mode_model_keeps_its_modes_and_statistics():
    model = randomise_bn(matting.dim(width=0.25), seed=2).train()
    model.down1.conv1.cbr_unit[1].eval()  # a frozen BN inside a model in training mode
    modes = {name: m.training for name, m in model.named_modules()}
    before = snapshot(model)
    res = compiler.compile(model, torch.randn(1, 4, 64, 64), ratio=0.5)
    assert_identical(model, before)  # no BN running-statistics update
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert res.module.training and not res.module.get_submodule("down1.conv1.cbr_unit.1").training
    assert_shares_nothing(res.module, model)


class Normalise(nn.Module):
    """A module with buffers only (no parameters), used through get_attr."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406, 0.5]).view(1, 4, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225, 0.5]).view(1, 4, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = Normalise()
        self.body = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 1, 3, padding=1))

    def forward(self, x):
        return self.body(self.norm(x))


def test_a_model_with_a_buffer_only_module_shares_nothing():
    model = randomise_bn(Net()).eval()
    before = snapshot(model)
    res = compiler.compile(model, torch.randn(1, 4, 16, 16), ratio=0.5, importance="l1")
    assert res.module.get_submodule("body.0").out_channels == 8
    assert_shares_nothing(res.module, model)
    assert_identical(model, before)
    with torch.no_grad():
        res.module.get_buffer("norm.mean").add_(1)
    assert_identical(model, before)
