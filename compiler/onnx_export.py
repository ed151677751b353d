"""ONNX export through the dynamo exporter, checked by onnx.checker and ONNX Runtime.

The legacy TorchScript exporter cannot export MaxUnpool2d; the dynamo one can (as ScatterND,
or as dense ops after ``passes.lower_unpool``). Batch, H and W are dynamic by default, and
ONNX Runtime is compared with torch at the traced size AND at odd sizes (97x131, 200x150):
dynamic-shape exports of SegNet-style models are known to break at some sizes only.

    report = export_onnx(model, "model.onnx", torch.zeros(1, 4, 320, 320))
    print(report.summary())

The file appears only once every check passed (written in a temp folder, then renamed);
weights go to ``model.onnx.data`` next to it when the model is too big for one protobuf.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch
from torch import nn

from matting.atomic import move_file, scratch_folder
from passes.errors import DCPError
from passes.trace import as_tuple

ODD_SIZES = ((97, 131), (200, 150))
FP32_ATOL, FP16_ATOL = 1e-4, 2e-2
# Max-pool argmax is discontinuous: a last-bit difference between two near-equal values in a
# window moves one unpooled value, which shows as a few off pixels (seen: full-width DIM at
# 320, 0.03 % of pixels at 1.1e-4, the rest within 1e-5). A wrong graph is off nearly everywhere.
MAX_OFF_FRACTION = 1e-3
PROTOBUF_LIMIT = 1_800_000_000  # bytes of weights above which they go to external data (hard limit 2 GiB)


class Check(NamedTuple):
    """ORT against fp32 torch at one input shape.

    >>> c = Check((1, 3, 8, 8), max_error=2e-4, off_fraction=0.05, atol=1e-4)
    >>> c.ok(), c.ok(max_off_fraction=0.1), c.ok(accept_max_error=0.5 / 255)
    (False, True, True)
    >>> Check((1,), max_error=5e-5, off_fraction=0.0, atol=1e-4).ok(max_off_fraction=0.0)
    True
    """
    shape: tuple[int, ...]
    max_error: float       # max abs error of ORT against fp32 torch
    off_fraction: float    # fraction of output elements further than ``atol`` off
    atol: float

    def ok(self, max_off_fraction: float = MAX_OFF_FRACTION, accept_max_error: float | None = None) -> bool:
        """Every output within ``atol``; or at most ``max_off_fraction`` of them beyond it; or,
        when the caller gives ``accept_max_error`` (a bound that means "the same result" for its
        outputs), none beyond that."""
        if self.max_error != self.max_error:  # NaN
            return False
        if self.max_error <= self.atol or self.off_fraction <= max_off_fraction:
            return True
        return accept_max_error is not None and self.max_error <= accept_max_error


@dataclass
class ExportReport:
    path: Path
    opset: int
    dynamic: bool
    ops: list[str]
    files: list[Path]
    checks: list[Check] = field(default_factory=list)
    provider: str = ""
    atol: float = FP32_ATOL

    def summary(self) -> str:
        lines = [f"wrote {self.path} (opset {self.opset}, {'dynamic' if self.dynamic else 'static'} shapes, "
                 f"{sum(f.stat().st_size for f in self.files) / 1e6:.1f} MB in {len(self.files)} file(s))",
                 f"ops: {', '.join(self.ops)}"]
        for c in self.checks:
            lines.append(f"ORT ({self.provider}) vs torch at {'x'.join(map(str, c.shape))}: max abs error "
                         f"{c.max_error:.2e}, {c.off_fraction:.3%} of pixels above {self.atol:.0e}")
        return "\n".join(lines)


def prepare(model: nn.Module, lower_unpool: bool = False, fold_bn: bool = False) -> nn.Module:
    """The deployment form of ``model``: eval mode, optionally BN-folded and unpool-lowered."""
    model = model.eval()
    if fold_bn:
        from passes.fold_bn import fold_bn as _fold
        model = _fold(model)
    if lower_unpool:
        from passes.lower_unpool import lower_unpool as _lower
        model = _lower(model)
    return model.eval()


def _dynamic_shapes(inputs: tuple) -> tuple:
    dyn = torch.export.Dim.DYNAMIC
    return tuple({0: dyn, 2: dyn, 3: dyn} if t.dim() == 4 else {0: dyn} for t in inputs)


def _export(model: nn.Module, inputs: tuple, dest: Path, dynamic: bool, opset: int | None) -> None:
    """Run the dynamo exporter quietly (it prints progress lines and warnings) and save."""
    weight_bytes = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    quiet, logger = io.StringIO(), logging.getLogger("torch.onnx")
    level = logger.level
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logger.setLevel(logging.ERROR)
            if dynamic:  # a traced batch of 1 is specialised (0/1 rule) and baked into reshapes
                inputs = tuple(t.expand(2, *t.shape[1:]).contiguous() if isinstance(t, torch.Tensor)
                               and t.dim() == 4 and t.shape[0] == 1 else t for t in inputs)
            program = torch.onnx.export(model, inputs, dynamo=True, opset_version=opset, verbose=False,
                                        dynamic_shapes=_dynamic_shapes(inputs) if dynamic else None)
            program.save(dest, external_data=weight_bytes > PROTOBUF_LIMIT)
    except Exception as e:
        msg = str(e).strip().splitlines()
        raise DCPError(f"ONNX export failed: {type(e).__name__}: {msg[0] if msg else ''}") from e
    finally:
        logger.setLevel(level)


def _providers() -> list:
    """CUDA only on a real GPU (onnxruntime-gpu lists it anyway and falls back with an error),
    without TF32, which alone would be ~1e-3 off fp32 torch."""
    import onnxruntime as ort
    if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
        return [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def check_sizes(example: torch.Tensor, dynamic: bool, sizes: Sequence[Sequence[int]] | None) -> list[tuple[int, ...]]:
    """Input shapes to compare at: the traced one, and when dynamic, odd sizes (the first at batch 2)."""
    shapes = [tuple(example.shape)]
    if dynamic and example.dim() == 4:
        extra = ODD_SIZES if sizes is None else sizes
        for i, (h, w) in enumerate(extra):
            shapes.append((2 if i == 0 else example.shape[0], example.shape[1], int(h), int(w)))
    return shapes


def compare_with_torch(onnx_path: Path, reference: nn.Module, shapes: list[tuple[int, ...]], dtype: torch.dtype,
                       provider_list: list | None = None, atol: float = FP32_ATOL) -> tuple[list[Check], str]:
    """How far ORT is from ``reference`` (fp32 torch) on random inputs of each shape."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    providers = provider_list or _providers()
    try:
        session = ort.InferenceSession(str(onnx_path), opts, providers=providers)
    except Exception:  # an ORT build without that provider option: plain provider names
        session = ort.InferenceSession(str(onnx_path), opts, providers=[p if isinstance(p, str) else p[0]
                                                                         for p in providers])
    name = session.get_inputs()[0].name
    results = []
    gen = torch.Generator().manual_seed(0)
    for shape in shapes:
        x = torch.randn(*shape, generator=gen)
        with torch.no_grad():
            ref = reference(x).float().numpy()
        try:
            out = session.run(None, {name: x.to(dtype).numpy()})[0]
        except Exception as e:  # ORT errors are long; the first line names the node
            raise DCPError(f"ONNX Runtime failed at input {'x'.join(map(str, shape))}: "
                           f"{str(e).strip().splitlines()[0]}") from e
        if out.shape != ref.shape:
            raise DCPError(f"ONNX output shape {out.shape} != torch {ref.shape} at input {shape}")
        err = abs(out.astype("float32") - ref)
        results.append(Check(shape, float(err.max()), float((~(err <= atol)).mean()), atol))
    return results, session.get_providers()[0]


def export_onnx(model: nn.Module, path: str | os.PathLike, example_inputs: Any, dynamic: bool = True,
                opset: int | None = None, lower_unpool: bool = False, fold_bn: bool = False, fp16: bool = False,
                check: bool = True, sizes: Sequence[Sequence[int]] | None = None,
                accept_max_error: float | None = None) -> ExportReport:
    """Export ``model`` to ``path`` (dynamic batch/H/W unless ``dynamic=False``) and verify it.

    ``lower_unpool`` replaces MaxUnpool by dense ops (TensorRT), ``fold_bn`` folds BN into convs,
    ``fp16`` exports half weights and I/O. Raises ``DCPError`` (and writes nothing) if, at any
    checked size, more than 0.1 % of ORT's outputs differ from fp32 torch by more than 1e-4
    (2e-2 in fp16): max-pool argmax flips on near-ties may move a few pixels, a bug moves all.
    ``accept_max_error``: the caller's own "same result" bound, which passes a check however
    many outputs exceed the tolerance (a matting model's caller gives half an 8-bit alpha level).
    """
    inputs = as_tuple(example_inputs)
    if len(inputs) != 1:
        raise DCPError("export_onnx supports single-input models")
    reference = model.eval()
    deploy = prepare(model, lower_unpool=lower_unpool, fold_bn=fold_bn)
    dtype = torch.float16 if fp16 else torch.float32
    if fp16:
        deploy = _half_copy(deploy)
    path = Path(path)
    if path.is_dir():
        raise DCPError(f"{path} is a folder; give the .onnx file to write")
    with scratch_folder(path) as tmp:
        dest = tmp / path.name  # external data is named after the file: keep the final name
        _export(deploy, tuple(t.to(dtype) for t in inputs), dest, dynamic, opset)
        report = _check_model(dest, opset, dynamic)
        if check:
            shapes = check_sizes(inputs[0], dynamic, sizes)
            report.atol = FP16_ATOL if fp16 else FP32_ATOL
            report.checks, report.provider = compare_with_torch(dest, reference, shapes, dtype, atol=report.atol)
            bad = [c for c in report.checks if not c.ok(accept_max_error=accept_max_error)]
            if bad:
                c = bad[0]
                raise DCPError(f"ONNX Runtime differs from torch at input {'x'.join(map(str, c.shape))}: "
                               f"{c.off_fraction:.2%} of pixels above {report.atol:.0e} (max {c.max_error:.2e}); "
                               f"nothing written")
        report.files = _move_into(tmp, path.parent)
        report.path = path
        return report


def _half_copy(model: nn.Module) -> nn.Module:
    import copy
    return copy.deepcopy(model).half()


def _check_model(dest: Path, opset: int | None, dynamic: bool) -> ExportReport:
    import onnx
    try:
        onnx.checker.check_model(str(dest), full_check=True)  # by path: handles external data
    except Exception as e:
        raise DCPError(f"exported model fails onnx.checker: {str(e).strip().splitlines()[0]}") from e
    proto = onnx.load(str(dest), load_external_data=False)
    ops = sorted({n.op_type for n in proto.graph.node})
    got_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset or 0)
    return ExportReport(dest, got_opset, dynamic, ops, sorted(dest.parent.iterdir()))


def _move_into(tmp: Path, folder: Path) -> list[Path]:
    """Rename the exported files into place, weights first, so the .onnx never points at nothing."""
    files = sorted(tmp.iterdir(), key=lambda f: f.suffix == ".onnx")
    return [move_file(f, folder / f.name) for f in files]
