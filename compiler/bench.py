"""Latency benchmarks shared by ``dcp bench`` and ``benchmarks/latency.py``.

A *backend* is one way to run a model: torch eager fp32 (CPU or CUDA); on CUDA also fp16 /
bf16 with channels_last, torch.compile and a CUDA graph; ONNX Runtime on CPU, and with its
CUDA provider only when a real GPU is present. Every (model, backend, size) gets a warm-up,
then the median of repeated batch-1 runs (CUDA events on GPU) and the peak memory.
Rows are compared with the FIRST model (the teacher): speedup next to the MAC ratio.

>>> conv = lambda c: torch.nn.Sequential(torch.nn.Conv2d(4, c, 3))
>>> rows = run({"a": conv(8), "b": conv(4)},
...            sizes=[16], backends=["eager-fp32"], repeats=2, warmup=1, progress=False)
>>> [(r.model, r.mac_ratio) for r in rows]
[('a', 1.0), ('b', 2.0)]
"""
from __future__ import annotations

import copy
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

import passes
from passes.errors import DCPError

from .models import input_channels

CUDA_ONLY = ("eager-fp16-cl", "eager-bf16-cl", "compile-fp16-cl", "cudagraph-fp16-cl", "ort-cuda")
BACKENDS = ("eager-fp32", *CUDA_ONLY[:4], "ort-cpu", "ort-cuda")


@dataclass
class Row:
    model: str
    backend: str
    size: int
    median_ms: float | None
    runs: list[float] = field(default_factory=list)
    peak_mb: float | None = None
    macs: int = 0
    params: int = 0
    mac_ratio: float = 1.0            # teacher MACs / this model's MACs
    speedup: float | None = None      # teacher median / this median, same backend and size
    note: str = ""

    @property
    def efficiency(self) -> float | None:
        """speedup / MAC ratio: 1.0 means latency fell exactly as much as the MACs."""
        return None if self.speedup is None else self.speedup / self.mac_ratio


def gpu_present() -> bool:
    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def default_backends(device: str) -> list[str]:
    if device == "cuda":
        return list(BACKENDS)
    return ["eager-fp32", "ort-cpu"]


def run_settings(gpu: bool, quick: bool = False, sizes=None, backends=None, repeats=None, warmup=None,
                 onnx: bool = True, quick_backends=None) -> tuple[list[int], list[str], int, int]:
    """``(sizes, backends, repeats, warmup)`` of a timing run, the given ones or the defaults:
    sizes 320 640 1024 (+2048 on GPU), the device's backends, 5 timed runs after 2 warm-ups
    on CPU and 20 after 5 on GPU; ``quick``: 320 only, ``quick_backends`` (default: the
    device's), 2 runs after 1. ``onnx=False`` drops the ONNX Runtime backends.

    >>> run_settings(gpu=False, quick=True, quick_backends=["eager-fp32"])
    ([320], ['eager-fp32'], 2, 1)
    """
    sizes = list(sizes or ([320] if quick else [320, 640, 1024] + ([2048] if gpu else [])))
    if any(s < 32 for s in sizes):
        raise ValueError(f"sizes must be at least 32 (five 2x poolings), got {sizes}")
    backends = list(backends or (quick and quick_backends) or default_backends("cuda" if gpu else "cpu"))
    if not onnx:
        backends = [b for b in backends if not b.startswith("ort")]
    repeats = repeats or (2 if quick else 20 if gpu else 5)
    warmup = warmup if warmup is not None else (1 if quick else 5 if gpu else 2)
    if repeats < 1 or warmup < 0:
        raise ValueError("--repeats must be >= 1 and --warmup >= 0")
    return sizes, backends, repeats, warmup


# ----------------------------------------------------------------------------- timing
def time_once(fn: Callable[[], object], cuda: bool) -> float:
    """Milliseconds of one call: CUDA events on GPU (kernels are async), wall clock otherwise."""
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def measure_interleaved(fns: dict[str, Callable[[], object]], repeats: int, cuda: bool) -> dict[str, list[float]]:
    """Time several (already warm) callables round-robin, so that load from other processes
    and clock changes hit every model alike: their RATIO is what the benchmark reports."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    if cuda:
        torch.cuda.synchronize()
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(time_once(fn, cuda))
    return times


class PeakMemory:
    """Peak memory of a block in MB: CUDA allocator peak, or the process's peak RSS growth on Linux."""

    def __init__(self, cuda: bool):
        self.cuda, self.mb = cuda, None

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.base = _rss_kb("VmRSS")
            try:  # writing 5 resets VmHWM (the peak RSS) to the current RSS
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                self.base = None
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.mb = torch.cuda.max_memory_allocated() / 2**20
        elif self.base is not None and (peak := _rss_kb("VmHWM")) is not None:
            self.mb = max(0, peak - self.base) / 1024
        return False


def _rss_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


# ----------------------------------------------------------------------------- backends
def _torch_runner(model: nn.Module, x: torch.Tensor, backend: str) -> Callable[[], object]:
    """A no-argument callable that runs one forward of ``model`` on ``x`` (already on its device)."""
    device = x.device
    dtype = torch.bfloat16 if "bf16" in backend else torch.float16 if "fp16" in backend else torch.float32
    fmt = torch.channels_last if backend.endswith("-cl") else torch.contiguous_format
    m = copy.deepcopy(model).eval().to(device=device, dtype=dtype, memory_format=fmt)
    xb = x.to(device=device, dtype=dtype).contiguous(memory_format=fmt)
    if backend.startswith("compile"):
        m = torch.compile(m)
    if backend.startswith("cudagraph"):
        return _cuda_graph(m, xb)

    def run():
        with torch.inference_mode():
            return m(xb)
    return run


def _cuda_graph(m: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """Capture one forward in a CUDA graph (after side-stream warm-up, as the docs ask)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):
            m(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        m(x)
    return graph.replay


def _ort_runner(onnx_path: Path, x: torch.Tensor, backend: str) -> Callable[[], object]:
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = torch.get_num_threads()
    if backend == "ort-cuda":
        if hasattr(ort, "preload_dlls"):  # CUDA/cuDNN from torch's wheels, where ORT may not look
            try:
                ort.preload_dlls()
            except Exception:
                pass
        session = ort.InferenceSession(str(onnx_path), opts, providers=["CUDAExecutionProvider"])
        if session.get_providers()[0] != "CUDAExecutionProvider":  # ORT falls back to CPU silently
            raise RuntimeError("ONNX Runtime could not start its CUDA provider (CUDA/cuDNN libraries?)")
        binding = session.io_binding()  # device-resident input and output: no host copies timed
        binding.bind_ortvalue_input(session.get_inputs()[0].name,
                                    ort.OrtValue.ortvalue_from_numpy(x.numpy(), "cuda", 0))
        binding.bind_output(session.get_outputs()[0].name, "cuda", 0)
        return lambda: session.run_with_iobinding(binding)
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)


def available(backend: str) -> str | None:
    """None if ``backend`` can run here, else why not."""
    if backend not in BACKENDS:
        raise DCPError(f"unknown backend '{backend}'; choose from {', '.join(BACKENDS)}")
    if backend in CUDA_ONLY and not gpu_present():
        return "needs a CUDA GPU"
    if backend.startswith("ort"):
        try:
            import onnxruntime as ort
        except ImportError:
            return "onnxruntime is not installed"
        if backend == "ort-cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            return "onnxruntime has no CUDA provider"
    return None


# ----------------------------------------------------------------------------- driver
def export_for_bench(model: nn.Module, folder: Path, name: str, size: int, lower_unpool: bool = True) -> Path:
    """A dynamic-shape ONNX file of ``model`` for the ORT backends (unchecked: ``dcp export`` verifies)."""
    from .onnx_export import export_onnx
    path = folder / f"{name.replace('/', '_').replace(':', '_')}.onnx"
    export_onnx(model, path, torch.randn(1, input_channels(model), size, size), dynamic=True,
                lower_unpool=lower_unpool, check=False)
    return path


def run(models: dict[str, nn.Module], sizes: Iterable[int], backends: Iterable[str], repeats: int = 5,
        warmup: int = 2, compile_sizes: Iterable[int] | None = None, onnx_dir: Path | None = None,
        lower_unpool: bool = True, device: str | None = None, progress: bool = True) -> list[Row]:
    """Time every model on every backend and size; the first model is the baseline.
    ``device`` (default: cuda if present) is where the torch eager-fp32 rows run."""
    tqdm = _progress_bar()
    sizes, backends = list(sizes), list(backends)
    device = device or ("cuda" if gpu_present() else "cpu")
    skipped = {b: why for b in backends if (why := available(b))}
    live = [b for b in backends if b not in skipped]
    onnx_paths: dict[str, Path] = {}
    tmp = None
    if any(b.startswith("ort") for b in live):
        if onnx_dir is None:
            tmp = tempfile.TemporaryDirectory(prefix="dcp-bench-")
            onnx_dir = Path(tmp.name)
        try:
            for name, model in tqdm(models.items(), desc="ONNX export", disable=not progress):
                onnx_paths[name] = export_for_bench(model, Path(onnx_dir), name, min(sizes), lower_unpool)
        except Exception as e:  # e.g. onnxscript missing on a bare GPU box: torch rows still run
            msg = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
            skipped.update({b: f"ONNX export failed: {msg}" for b in live if b.startswith("ort")})
            live = [b for b in live if b not in skipped]
    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed sizes: let cuDNN pick kernels during warm-up
    rows = [Row(n, b, s, None, note=f"skipped: {skipped[b]}") for s in sizes for b in skipped for n in models]
    jobs = [(s, b) for s in sizes for b in live
            if not (b.startswith("compile") and compile_sizes is not None and s not in compile_sizes)]
    for size, backend in tqdm(jobs, desc="bench", disable=not progress):
        rows += _time_group(models, backend, size, repeats, warmup, onnx_paths, device)
    if tmp is not None:
        tmp.cleanup()
    _fill_ratios(rows, models, next(iter(models)))
    return rows


def _progress_bar():
    try:
        from tqdm import tqdm
        return tqdm
    except ImportError:  # benchmarks/gpu.sh installs nothing
        return lambda it, **kw: it


def _time_group(models: dict[str, nn.Module], backend: str, size: int, repeats: int, warmup: int,
                onnx_paths: dict[str, Path], device: str) -> list[Row]:
    """Build and warm every model for one (backend, size), then time them interleaved."""
    ort = backend.startswith("ort")
    # ORT syncs before returning, so wall-clock time is right for it; its memory is not torch's
    cuda = not ort and (backend in CUDA_ONLY or device == "cuda")
    rows, fns = {}, {}
    for name, model in models.items():
        x = torch.randn(1, input_channels(model), size, size, generator=torch.Generator().manual_seed(0))
        rows[name] = row = Row(name, backend, size, None)
        try:
            with PeakMemory(cuda) as mem:  # build + warm-up: weights, activations, workspaces
                fn = _ort_runner(onnx_paths[name], x, backend) if ort else _torch_runner(
                    model, x.to("cuda" if cuda else "cpu"), backend)
                for _ in range(max(1, warmup)):
                    fn()
            row.peak_mb, fns[name] = mem.mb, fn
        except Exception as e:  # one failing backend (e.g. an op without a bf16 kernel) must not end the run
            msg = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
            row.note = f"failed: {type(e).__name__}: {msg}"
    try:
        for name, runs in measure_interleaved(fns, repeats, cuda).items():
            rows[name].runs, rows[name].median_ms = runs, statistics.median(runs)
    except Exception as e:
        for name in fns:
            rows[name].note = f"failed while timing: {type(e).__name__}"
    finally:
        fns.clear()
        if gpu_present():
            torch.cuda.empty_cache()
    return list(rows.values())


def _fill_ratios(rows: list[Row], models: dict[str, nn.Module], baseline: str) -> None:
    costs = {}
    for name, model in models.items():
        for size in {r.size for r in rows}:
            x = torch.zeros(1, input_channels(model), size, size)
            costs[name, size] = passes.count(model, x)
    base = {(r.backend, r.size): r.median_ms for r in rows if r.model == baseline}
    for r in rows:
        r.params, r.macs = costs[r.model, r.size]
        r.mac_ratio = costs[baseline, r.size][1] / max(1, r.macs)
        b = base.get((r.backend, r.size))
        r.speedup = b / r.median_ms if b and r.median_ms else None


def as_dicts(rows: list[Row]) -> list[dict]:
    return [dict(asdict(r), efficiency=r.efficiency) for r in rows]


# ----------------------------------------------------------------------------- reports
HEADER = ("backend", "size", "model", "GMACs", "MAC ratio", "median ms", "speedup", "speedup/MAC ratio", "peak MB")


def markdown(rows: list[Row]) -> str:
    """One row per (backend, size, model): the speedup next to the MAC ratio."""
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in sorted(rows, key=lambda r: (BACKENDS.index(r.backend), r.size)):
        cells = [r.backend, str(r.size), r.model, f(r.macs / 1e9, ".2f"), f(r.mac_ratio, ".2f"),
                 f(r.median_ms, ".2f") if r.median_ms is not None else r.note or "-",
                 f(r.speedup, ".2f"), f(r.efficiency, ".2f"), f(r.peak_mb, ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[Row], path: Path, title: str = "") -> Path | None:
    """Median latency against input size, one panel per backend, one line per model."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    done = [r for r in rows if r.median_ms is not None]
    backends = [b for b in BACKENDS if any(r.backend == b for r in done)]
    if not backends:
        return None
    fig, axes = plt.subplots(1, len(backends), figsize=(4 * len(backends), 3.5), squeeze=False)
    for ax, b in zip(axes[0], backends):
        for model in dict.fromkeys(r.model for r in done):
            pts = sorted((r.size, r.median_ms) for r in done if r.backend == b and r.model == model)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=model)
        ax.set(title=b, xlabel="input size (px)", ylabel="median ms", yscale="log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    from matting.atomic import write_figure
    return write_figure(path, fig, dpi=110)


def write(rows: list[Row], folder: Path, stem: str, meta: dict) -> list[Path]:
    """``stem.json`` (rows + meta), ``stem.md`` (the table) and ``stem.png`` in ``folder``, atomically."""
    import json
    from matting.atomic import write_text
    folder = Path(folder)
    out = []
    for suffix, text in ((".json", json.dumps({"meta": meta, "rows": as_dicts(rows)}, indent=1)),
                         (".md", markdown(rows) + "\n")):
        path = folder / f"{stem}{suffix}"
        write_text(path, text)
        out.append(path)
    png = plot(rows, folder / f"{stem}.png", title=meta.get("title", ""))
    return out + ([png] if png else [])


def environment() -> dict:
    """What the numbers were measured on."""
    import platform
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or
           platform.machine(), "gpu": torch.cuda.get_device_name(0) if gpu_present() else None}
    try:
        import onnxruntime
        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return env
