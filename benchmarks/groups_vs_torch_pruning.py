"""Our channel groups vs torch-pruning's DependencyGraph groups: what each finds, and how fast.

    .venv/bin/python benchmarks/groups_vs_torch_pruning.py [--models dim,resnet18] [--repeats 5]
        [--size 224] [--out benchmarks/results]

Per model (torchvision CNN families, random init, and the DIM teacher at 320x320):
- ours: ``passes.trace`` + ``passes.channel_groups``; theirs:
  ``tp.DependencyGraph().build_dependency(model, example_inputs=x)`` + ``get_all_groups()``;
  same input, same process, one warm-up then the median of ``--repeats`` (wall and CPU time).
- The groups are compared as partitions of the producer layers (conv / linear layers whose
  OUTPUT channels a group shrinks; depthwise convs follow their input and are left out).
  Each connected piece of the two partitions is: identical, tied by us but split by
  torch-pruning, tied by torch-pruning but split by us, or mixed; layers only one tool
  treats as producers are counted apart. Every difference is explained (unpool index edges,
  what we freeze and why).
Writes ``groups_vs_torch_pruning.md`` and ``.json`` into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import torch

from matting.data.io import write_text
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import matting  # noqa: E402
import passes  # noqa: E402
from tests.random_shape_nets import ConvGRU  # noqa: E402  (Robust Video Matting's recurrent cell)
from passes.channels import analyse, build_groups, group_index  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def zoo() -> dict[str, tuple]:
    """name -> (constructor, input channels, default side or None for --size)."""
    import torchvision.models as tvm
    from torchvision.models import segmentation as seg
    return {
        "dim": (lambda: matting.dim(), 4, 320),
        "resnet18": (tvm.resnet18, 3, None),
        "vgg11_bn": (tvm.vgg11_bn, 3, None),
        "mobilenet_v2": (tvm.mobilenet_v2, 3, None),
        "mobilenet_v3_small": (tvm.mobilenet_v3_small, 3, None),
        "efficientnet_b0": (tvm.efficientnet_b0, 3, None),
        "regnet_x_400mf": (tvm.regnet_x_400mf, 3, None),
        "densenet121": (tvm.densenet121, 3, None),
        "squeezenet1_0": (tvm.squeezenet1_0, 3, None),
        "shufflenet_v2_x0_5": (tvm.shufflenet_v2_x0_5, 3, None),
        "googlenet": (lambda: tvm.googlenet(aux_logits=False, init_weights=False), 3, None),
        "fcn_resnet50": (lambda: seg.fcn_resnet50(weights=None, weights_backbone=None), 3, None),
        "deeplabv3_mobilenet_v3_large":
            (lambda: seg.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None), 3, None),
        "lraspp_mobilenet_v3_large":
            (lambda: seg.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None), 3, None),
        "convnext_tiny": (tvm.convnext_tiny, 3, None),
        "convgru": (ConvGRUNet, 3, None),
    }




class ConvGRUNet(nn.Module):
    """A decoder stage as RVM's BottleneckBlock writes it: half the channels through the GRU."""

    def __init__(self, c=64):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.hidden = nn.Sequential(nn.Conv2d(3, c // 2, 3, stride=2, padding=1), nn.Tanh())
        self.gru = ConvGRU(c // 2)
        self.head = nn.Conv2d(c, 1, 1)

    def forward(self, img):
        x, h = self.stem(img), self.hidden(img)
        a, b = x.split(self.gru.channels, dim=-3)
        return self.head(torch.cat([a, self.gru(b, h)], dim=-3))


# --- the two analyses ---------------------------------------------------------------
def ours(model, x):
    return passes.channel_groups(passes.trace(model, x))


def theirs(model, x):
    import torch_pruning as tp
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    return dg, list(dg.get_all_groups(root_module_types=[nn.Conv2d, nn.Linear]))


def timed(fn, repeats: int) -> tuple[object, dict[str, float]]:
    """One warm-up, then the median wall and CPU seconds of ``repeats`` runs."""
    result = fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        result = fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return result, {"wall_s": statistics.median(wall), "cpu_s": statistics.median(cpu),
                    "wall_all_s": wall}


def is_producer(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and not (module.groups > 1 and module.groups == module.in_channels
                                                   == module.out_channels)


def our_partition(groups) -> list[dict]:
    return [{"producers": frozenset(g.names("producer")), "frozen": g.frozen, "id": g.id}
            for g in groups if g.names("producer")]


def their_partition(model, dg, groups) -> list[dict]:
    names = {m: n for n, m in model.named_modules()}
    out = []
    for group in groups:
        producers = {names[dep.target.module] for dep, _ in group
                     if dg.is_out_channel_pruning_fn(dep.handler) and is_producer(dep.target.module)}
        if producers:
            out.append({"producers": frozenset(producers)})
    return out


# --- comparing partitions -------------------------------------------------------------
REASONS = (  # frozen reason -> a category a reader can act on
    (r"reaches the graph output", "output layer (reaches the graph output)"),
    (r"grouped transposed conv", "grouped transposed conv (not pruned)"),
    (r"normalises across channels", "norm across channels (LayerNorm / GroupNorm statistics)"),
    (r"has no rule for channels on dim", "op without a rule for channels off dim 1 (channels-last)"),
    (r"over the channels on dim|over the channel dim", "constant broadcast over the channels"),
    (r"merges the channels with the batch|moves the batch dim|scatters the channel dims|box of channel dims",
     "reshape that moves channels out of reach"),
    (r"graph input", "graph input"),
    (r"no channel rule for (.*)", r"no rule: \1"),
    (r"no producer layer", "no producer layer"),
)


def reason_category(reason: str | None) -> str | None:
    if reason is None:
        return None
    for pattern, label in REASONS:
        m = re.search(pattern, reason)
        if m:
            return m.expand(label)
    return reason.split(": ", 1)[-1]


def compare(mine: list[dict], other: list[dict]) -> dict:
    """Join the two partitions into connected pieces and classify each piece."""
    piece_of: dict[str, int] = {}
    parent: list[int] = []

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for part in (mine, other):
        for g in part:
            first = None
            for p in sorted(g["producers"]):
                if p not in piece_of:
                    piece_of[p] = len(parent)
                    parent.append(len(parent))
                first = piece_of[p] if first is None else first
                parent[find(piece_of[p])] = find(first)
    pieces: dict[int, dict] = {}
    for tag, part in (("ours", mine), ("theirs", other)):
        for g in part:
            root = find(piece_of[next(iter(g["producers"]))])
            pieces.setdefault(root, {"ours": [], "theirs": []})[tag].append(g)
    rows = []
    for piece in pieces.values():
        a, b = piece["ours"], piece["theirs"]
        layers_a = set().union(*(g["producers"] for g in a)) if a else set()
        layers_b = set().union(*(g["producers"] for g in b)) if b else set()
        if not b:
            kind = "only ours"
        elif not a:
            kind = "only torch-pruning"
        elif len(a) == len(b) == 1 and layers_a == layers_b:
            kind = "identical"
        elif len(a) == 1:
            kind = "we tie, torch-pruning splits"
        elif len(b) == 1:
            kind = "torch-pruning ties, we split"
        else:
            kind = "mixed"
        frozen = sorted({reason_category(g["frozen"]) for g in a if g["frozen"]})
        rows.append({"kind": kind, "ours": [sorted(g["producers"]) for g in a],
                     "theirs": [sorted(g["producers"]) for g in b], "frozen_by_us": frozen,
                     "only_ours_layers": sorted(layers_a - layers_b),
                     "only_theirs_layers": sorted(layers_b - layers_a)})
    return {"pieces": rows, "counts": dict(Counter(r["kind"] for r in rows))}


def unpool_groups(model, x) -> set[int]:
    """Ids of our groups that pass through a MaxUnpool (hence tied by a pool->unpool indices edge)."""
    ctx = analyse(passes.trace(model, x))
    groups = build_groups(ctx)
    where = group_index(ctx, groups)
    out = set()
    for node in ctx.gm.graph.nodes:
        if node.op == "call_module" and isinstance(ctx.gm.get_submodule(node.target), (nn.MaxUnpool2d, nn.MaxUnpool1d)):
            space = ctx.space(node.args[0])
            out.update(where[ctx.ids.find(i)][0] for i in space.tolist())
    return out


def explain(row: dict, tied_by_unpool: set, ours_by_producers: dict) -> str:
    """One line saying why the two tools differ on a piece."""
    kind = row["kind"]
    if kind == "identical":
        return "same coupling" + (f"; we freeze it: {', '.join(row['frozen_by_us'])}" if row["frozen_by_us"] else "")
    if kind == "we tie, torch-pruning splits":
        gid = ours_by_producers[tuple(row["ours"][0])]
        if gid in tied_by_unpool:
            return ("pool->unpool indices edge: the unpool's value input must keep the channels of the "
                    "pool's indices; torch-pruning does not see it (indices have no grad_fn)")
        return "we tie more: " + (", ".join(row["frozen_by_us"]) or "coupling torch-pruning does not trace")
    if kind == "only torch-pruning":
        return "torch-pruning prunes layers we do not treat as producers (e.g. grouped convs we freeze)"
    if kind == "only ours":
        return "layers torch-pruning does not reach as out-channel roots"
    return "different coupling: " + (", ".join(row["frozen_by_us"]) or "see the layer lists")


# --- driver ---------------------------------------------------------------------------
def run_model(name: str, make, channels: int, side: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(1, channels, side, side)
    groups, t_ours = timed(lambda: ours(model, x), repeats)
    mine = our_partition(groups)
    result = {"model": name, "input": list(x.shape),
              "ours": {"groups": len(groups), "prunable": sum(g.prunable for g in groups),
                       "with_producers": len(mine),
                       "frozen_reasons": dict(Counter(reason_category(g.frozen) for g in groups
                                                      if g.frozen and g.names("producer")))}}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (dg, tp_groups), t_theirs = timed(lambda: theirs(model, x), repeats)
    except Exception as e:  # the peer fails on some models: that is a result too
        error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return {**result, "torch_pruning": {"error": error}, "time": {"ours": t_ours}}
    other = their_partition(model, dg, tp_groups)
    cmp = compare(mine, other)
    tied = unpool_groups(model, x)
    by_producers = {tuple(sorted(g["producers"])): g["id"] for g in mine}
    for row in cmp["pieces"]:
        row["why"] = explain(row, tied, by_producers)
    return {
        **result,
        "torch_pruning": {"groups": len(tp_groups), "with_producers": len(other)},
        "comparison": cmp,
        "time": {"ours": t_ours, "torch_pruning": t_theirs,
                 "speedup_wall": t_theirs["wall_s"] / t_ours["wall_s"]},
    }


def markdown(results: list[dict], meta: dict) -> str:
    kinds = ("identical", "we tie, torch-pruning splits", "torch-pruning ties, we split", "mixed",
             "only ours", "only torch-pruning")
    lines = [f"# Channel groups: ours vs torch-pruning {meta['torch_pruning']}", "",
             f"torch {meta['torch']}, {meta['cpus']} CPUs, torch threads {meta['threads']}, load average "
             f"{meta['load_average']:.1f} at start; median of {meta['repeats']} runs after a warm-up. "
             "Ours = `passes.trace` + `passes.channel_groups` (shapes from meta tensors, no real "
             "forward); theirs = `DependencyGraph().build_dependency` + `get_all_groups` (a real "
             "forward with autograd).", "",
             "| model | input | our groups (prunable) | tp groups | " + " | ".join(kinds)
             + " | of which we freeze | ours wall s | tp wall s | speedup | ours CPU s | tp CPU s |",
             "|---|---|---|---|" + "---|" * len(kinds) + "---|---|---|---|---|---|"]
    for r in results:
        t = r["time"]
        if "error" in r["torch_pruning"]:
            lines.append(f"| {r['model']} | {'x'.join(map(str, r['input'][1:]))} | {r['ours']['groups']} "
                         f"({r['ours']['prunable']}) | fails | " + " | ".join("-" for _ in kinds)
                         + f" | - | {t['ours']['wall_s']:.3f} | - | - | {t['ours']['cpu_s']:.3f} | - |")
            continue
        c = r["comparison"]["counts"]
        lines.append(
            f"| {r['model']} | {'x'.join(map(str, r['input'][1:]))} | {r['ours']['groups']} "
            f"({r['ours']['prunable']}) | {r['torch_pruning']['groups']} | "
            + " | ".join(str(c.get(k, 0)) for k in kinds)
            + f" | {sum(bool(p['frozen_by_us']) for p in r['comparison']['pieces'])}"
            + f" | {t['ours']['wall_s']:.3f} | {t['torch_pruning']['wall_s']:.3f} | {t['speedup_wall']:.1f}x"
            f" | {t['ours']['cpu_s']:.3f} | {t['torch_pruning']['cpu_s']:.3f} |")
    lines += ["", "Columns 5-10 count the connected pieces of the two partitions of producer layers "
              "(conv/linear layers whose output channels a group shrinks); \"of which we freeze\": "
              "pieces where our group is frozen (never pruned; reasons below). torch-pruning freezes "
              "nothing by itself: the user lists `ignored_layers` (e.g. the classifier).", "", "## Differences", ""]
    for r in results:
        if "error" in r["torch_pruning"]:
            lines.append(f"- **{r['model']}**: torch-pruning's build_dependency fails: `{r['torch_pruning']['error']}`; "
                         f"ours: {r['ours']['prunable']} of {r['ours']['groups']} groups prunable, frozen: "
                         + (", ".join(f"{n} x {k}" for k, n in r["ours"]["frozen_reasons"].items()) or "none"))
            continue
        rows = [p for p in r["comparison"]["pieces"] if p["kind"] != "identical" or p["frozen_by_us"]]
        if not rows:
            lines.append(f"- **{r['model']}**: every group identical, none frozen.")
            continue
        lines.append(f"- **{r['model']}**:")
        for why, n in Counter(p["why"] for p in rows).most_common():
            ex = next(p for p in rows if p["why"] == why)
            lines.append(f"  - {n} x {why}. E.g. ours {_short(ex['ours'])} vs torch-pruning {_short(ex['theirs'])}")
    return "\n".join(lines) + "\n"


def _short(groups: list[list[str]], limit: int = 3) -> str:
    txt = " + ".join("{" + ", ".join(g[:4]) + (", ..." if len(g) > 4 else "") + "}" for g in groups[:limit])
    return (txt + (f" + {len(groups) - limit} more" if len(groups) > limit else "")) or "-"


def main() -> int:
    from tqdm import tqdm
    import torch_pruning as tp
    models = zoo()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(models), help="comma-separated, from: " + ", ".join(models))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=224, help="input side of the torchvision models")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in models]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; known: {', '.join(models)}")
    meta = {"torch": torch.__version__, "torch_pruning": tp.__version__, "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "load_average": os.getloadavg()[0], "repeats": args.repeats}
    results = []
    for name in tqdm(names, desc="models"):
        make, channels, side = models[name]
        results.append(run_model(name, make, channels, side or args.size, args.repeats))
    args.out.mkdir(parents=True, exist_ok=True)
    md = markdown(results, meta)
    write_text(args.out / "groups_vs_torch_pruning.md", md)
    write_text(args.out / "groups_vs_torch_pruning.json", json.dumps({"meta": meta, "results": results}, indent=1))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
