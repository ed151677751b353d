"""A latency model measured on the user's backend, for ``compile(target_latency=...)``.

Each layer with MACs (conv / linear, module or functional) becomes a *unit*: the layer plus the
per-channel ops that follow it alone (norm, activation, pooling), rebuilt at chosen widths and
timed IN CONTEXT: at the layer's real input shape, on the backend. A unit is timed on a coarse
grid of (input width, output width) points inside the widths selection can reach (``grid``
points per axis, snapped to ``round_to``) and interpolated bilinearly in between: full
in x out grids are thousands of timings, while on CPU a unit's time is close to linear in each
width between grid points (a bundle of channels then costs the table's DIFFERENCE between two
widths, as in HALP). The model's latency is predicted as the original's measured latency times
(sum of unit times at the plan's widths) / (sum at full width); what the units miss (unpool,
additions, memory traffic between layers) is corrected by measuring the compact model
(``compiler.latency_fit``).

This module runs things (backends, clocks) and describes units; ``compiler.latency_tables``
times units into tables, guarded against a disturbed clock, and caches them on disk
(``DCP_CACHE_DIR`` or ``~/.cache/dcp``), so a second compile of the same model re-times nothing.

>>> check_backend("torch-cpu")
'torch-cpu'
"""
from __future__ import annotations

import copy
import io
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import fx, nn
import torch.nn.functional as F

from passes.count import LayerAxes
from passes.errors import DCPError

BACKENDS = ("torch-cpu", "ort-cpu", "cuda-fp16", "cuda-bf16", "ort-cuda", "trt")
CUDA_BACKENDS = BACKENDS[2:]
ORT_PROVIDER = {"ort-cpu": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider",
                "trt": "TensorrtExecutionProvider"}
FOLLOWER_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU,
                    nn.GELU, nn.Hardswish, nn.Sigmoid, nn.Tanh, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool2d)
FOLLOWER_FUNCTIONS = (F.relu, torch.relu, F.relu6, F.silu, F.gelu, F.max_pool2d, F.avg_pool2d, torch.sigmoid)
MIN_SAMPLE_MS = 5.0  # a sample loops a fast unit until it lasts this long (timer resolution, noise)


def check_backend(backend: str) -> str:
    """``backend`` if it can run here, else one DCPError saying why."""
    if backend not in BACKENDS:
        raise DCPError(f"unknown latency backend '{backend}'; choose from {', '.join(BACKENDS)}")
    if backend in CUDA_BACKENDS and not torch.cuda.is_available():  # ORT-gpu lists CUDA even without one
        raise DCPError(f"backend '{backend}' needs a CUDA GPU and torch sees none; use torch-cpu or ort-cpu")
    if backend in ORT_PROVIDER:
        try:
            import onnxruntime as ort
        except ImportError:
            raise DCPError(f"backend '{backend}' needs onnxruntime, which is not installed") from None
        if ORT_PROVIDER[backend] not in ort.get_available_providers():
            raise DCPError(f"backend '{backend}': onnxruntime has no {ORT_PROVIDER[backend]}")
    return backend


# ----------------------------------------------------------------------------- running
def is_cuda(backend: str) -> bool:
    return backend in CUDA_BACKENDS


def torch_fn(module: nn.Module, x: torch.Tensor, backend: str) -> Callable[[], object]:
    if backend == "torch-cpu":
        m, xb = module.eval(), x
    else:
        dtype = torch.float16 if backend == "cuda-fp16" else torch.bfloat16
        m = module.eval().to("cuda", dtype=dtype, memory_format=torch.channels_last)
        xb = x.to("cuda", dtype=dtype)
        xb = xb.contiguous(memory_format=torch.channels_last) if xb.dim() == 4 else xb

    def run():
        with torch.inference_mode():
            return m(xb)
    return run


def ort_session_fn(onnx_bytes_or_path, x: torch.Tensor, backend: str) -> Callable[[], object]:
    """A callable running one ORT inference on ``x`` with the backend's provider (device-resident
    I/O on CUDA: no host copies timed)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = torch.get_num_threads()
    # ORT's CPU workers spin after a run by default: with several sessions timed in turn, one
    # session's spinning threads steal the cores from the next one's run (a 2-3x distortion
    # measured on 2 cores). Without spinning each session is timed alone.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    provider = ORT_PROVIDER[backend]
    providers = [(provider, {"trt_fp16_enable": "1"}) if backend == "trt" else provider]
    session = ort.InferenceSession(onnx_bytes_or_path, opts, providers=providers)
    if session.get_providers()[0] != provider:  # ORT falls back to CPU silently
        raise DCPError(f"backend '{backend}': ONNX Runtime could not start {provider}")
    if backend == "ort-cpu":
        feed = {session.get_inputs()[0].name: x.numpy()}
        return lambda: session.run(None, feed)
    binding = session.io_binding()
    binding.bind_ortvalue_input(session.get_inputs()[0].name, ort.OrtValue.ortvalue_from_numpy(x.numpy(), "cuda", 0))
    for out in session.get_outputs():
        binding.bind_output(out.name, "cuda", 0)
    return lambda: session.run_with_iobinding(binding)


def _unit_onnx(module: nn.Module, x: torch.Tensor) -> bytes:
    """A unit as ONNX bytes. The TorchScript exporter: a unit is conv/norm/activation/pool only,
    which it exports in ~0.05 s where the dynamo one takes seconds (hundreds of units)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), buf, dynamo=False, opset_version=17)
    return buf.getvalue()


def runner(module: nn.Module, x: torch.Tensor, backend: str) -> Callable[[], object]:
    if backend in ORT_PROVIDER:
        return ort_session_fn(_unit_onnx(module, x), x, backend)
    return torch_fn(module, x, backend)


def elapsed_ms(fn: Callable[[], object], loops: int, cuda: bool) -> float:
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(loops):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / loops
    t = time.perf_counter()
    for _ in range(loops):
        fn()
    return (time.perf_counter() - t) * 1e3 / loops


def confirmed(samples: Sequence[float], agree: float) -> bool:
    """The fastest sample is trusted once a second one lies within ``agree`` of it."""
    return len(samples) > 1 and sorted(samples)[1] <= (1 + agree) * min(samples)


def time_fn(fn: Callable[[], object], cuda: bool, repeats: int = 3, agree: float = 0.15) -> float:
    """Milliseconds of one call: the fastest of at least ``repeats`` samples after a warm-up
    (other processes only ever add time, so the minimum is the least disturbed estimate). More
    samples are taken, up to 3x, until the two fastest agree within ``agree``: a lone fast
    sample is confirmed, and a machine busy with other work costs time, not accuracy. Fast
    calls are looped within a sample."""
    elapsed_ms(fn, 1, cuda)  # warm-up (allocations, kernel choice)
    samples = [elapsed_ms(fn, 1, cuda)]
    loops = max(1, int(MIN_SAMPLE_MS / max(samples[0], 1e-3)))
    if loops > 1:  # too fast to time one call: loop it, and drop the single-call probe
        samples = []
    samples += [elapsed_ms(fn, loops, cuda) for _ in range(max(repeats - len(samples), 2 - len(samples)))]
    while len(samples) < 3 * repeats and not confirmed(samples, agree):
        samples.append(elapsed_ms(fn, loops, cuda))
    return min(samples)


# ----------------------------------------------------------------------------- units
class _Call(nn.Module):
    """A follower function (``F.relu``, ``F.max_pool2d`` ...) with its other arguments bound."""

    def __init__(self, fn, args, kwargs):
        super().__init__()
        self.fn, self.args, self.kwargs = fn, tuple(args), dict(kwargs)

    def forward(self, x):
        return self.fn(x, *self.args, **self.kwargs)


class Unit(nn.Module):
    def __init__(self, layers: Sequence[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


@dataclass
class UnitSpec:
    """How to rebuild one layer and its followers at any widths."""
    node: str
    kind: str                 # conv / convT / linear
    dims: int                 # spatial dims of a conv
    hyper: dict               # kernel_size, stride, ... (conv) or {} (linear)
    bias: bool
    in_shape: tuple           # the layer's real input shape
    channels: tuple[int, int]  # full (in, out)
    followers: list           # ("bn", type) / ("same", module) / ("fn", fn, args, kwargs)

    def signature(self) -> dict:
        follow = [f[0] + ":" + (type(f[1]).__name__ + repr(f[1]) if f[0] == "same" else
                                getattr(f[1], "__name__", str(f[1])) + (repr(f[2:]) if f[0] == "fn" else ""))
                  for f in self.followers]
        return {"kind": self.kind, "dims": self.dims, "hyper": repr(sorted(self.hyper.items())), "bias": self.bias,
                "in_shape": list(self.in_shape), "channels": list(self.channels), "followers": follow}

    @property
    def depthwise(self) -> bool:
        """One filter per input channel: its input and output widths are one (its table is 1-D)."""
        groups = self.hyper.get("groups", 1)
        return self.kind != "linear" and groups > 1 and groups == self.channels[0]

    def build(self, w_in: int, w_out: int) -> tuple[nn.Module, torch.Tensor]:
        """The unit at these widths and a random input for it. A depthwise unit takes ``w_out`` as
        its input width too; a grouped one, widths rounded to its groups (as pruning keeps them)."""
        if self.kind == "linear":
            layers = [nn.Linear(w_in, w_out, bias=self.bias)]
        else:
            cls = {"conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d), "convT": (nn.ConvTranspose1d, nn.ConvTranspose2d,
                                                                        nn.ConvTranspose3d)}[self.kind][self.dims - 1]
            groups = self.hyper.get("groups", 1)
            if self.depthwise:
                w_in = groups = w_out
            elif groups > 1:
                w_in, w_out = (max(groups, round(w / groups) * groups) for w in (w_in, w_out))
            layers = [cls(w_in, w_out, bias=self.bias, **{**self.hyper, "groups": groups})]
        for f in self.followers:
            layers.append(f[1](w_out) if f[0] == "bn" else copy.deepcopy(f[1]) if f[0] == "same" else _Call(*f[1:]))
        shape = list(self.in_shape)
        shape[-1 if self.kind == "linear" else 1] = w_in
        with torch.no_grad():
            unit = Unit(layers).eval()
            for p in unit.parameters():  # non-degenerate values (no denormals, no all-zero)
                p.normal_(0, 0.1)
        return unit, torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def _conv_hyper(m: nn.Module) -> dict:
    keys = ["kernel_size", "stride", "padding", "dilation", "groups"]
    if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        keys.append("output_padding")
    else:
        keys.append("padding_mode")
    return {k: getattr(m, k) for k in keys}


def _shape(node) -> tuple | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if hasattr(meta, "shape") else None


def unit_spec(gm: fx.GraphModule, layer: LayerAxes) -> UnitSpec:
    node = next(n for n in gm.graph.nodes if n.name == layer.node)
    src = node.args[0] if node.args else node.kwargs.get("input")
    in_shape, out_shape = _shape(src), _shape(node)
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if isinstance(m, nn.Linear):
            kind, dims, hyper, bias = "linear", 0, {}, m.bias is not None
        else:
            transposed = isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))
            kind, dims, hyper, bias = "convT" if transposed else "conv", len(m.kernel_size), _conv_hyper(m), m.bias is not None
    else:
        w = _shape(node.args[1] if len(node.args) > 1 else node.kwargs.get("weight"))
        b = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        bias = b is not None
        if node.target is F.linear:
            kind, dims, hyper = "linear", 0, {}
        else:
            names = ("stride", "padding", "dilation", "groups")
            given = {k: (node.args[3 + i] if len(node.args) > 3 + i else node.kwargs.get(k)) for i, k in enumerate(names)}
            hyper = {"kernel_size": tuple(w[2:]), **{k: v for k, v in given.items() if v is not None}}
            kind, dims = "conv", len(w) - 2
    channels = (in_shape[-1], out_shape[-1]) if kind == "linear" else (in_shape[1], out_shape[1])
    return UnitSpec(layer.node, kind, dims, hyper, bias, in_shape, channels, _followers(gm, node))


def _followers(gm: fx.GraphModule, node: fx.Node) -> list:
    """The per-channel ops that consume this layer's output alone, in order."""
    out = []
    while len(node.users) == 1:
        user = next(iter(node.users))
        if not user.args or user.args[0] is not node:
            break
        if user.op == "call_module" and isinstance(m := gm.get_submodule(user.target), FOLLOWER_MODULES):
            out.append(("bn", type(m)) if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d))
                       else ("same", m))
        elif user.op == "call_function" and user.target in FOLLOWER_FUNCTIONS and all(
                not isinstance(a, fx.Node) for a in [*user.args[1:], *user.kwargs.values()]):
            out.append(("fn", user.target, user.args[1:], user.kwargs))
        else:
            break
        node = user
    return out
