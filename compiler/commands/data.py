"""``dcp data synth|split|composite``: make the synthetic set, split names, compose Composition-1k test."""
from __future__ import annotations

import argparse
from pathlib import Path

from matting.data import adobe, io
from matting.data.folder import folder_names, write_folder
from matting.data.synth import write_synth
from matting.data.transforms import trimap_from_alpha
from passes.errors import DCPError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="make data: synthetic set, train/validation split, Composition-1k test")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="{synth,split,composite}")

    s = dsub.add_parser("synth", help="write a synthetic matting set (deterministic by seed)")
    s.add_argument("--out", required=True, help="output folder: OUT/{image,fg,bg,alpha,trimap}/NAME.png + meta.json")
    s.add_argument("-n", type=int, default=100, help="number of samples (default 100)")
    s.add_argument("--size", type=int, default=320, help="side in px (default 320)")
    s.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    s.add_argument("--band", type=int, nargs=2, metavar=("LO", "HI"),
                   help="trimap unknown band half-width range in px (default ~1.5-4%% of the size)")
    s.add_argument("--force", action="store_true", help="replace an existing OUT")
    s.set_defaults(func=run_synth)

    sp = dsub.add_parser("split", help="seeded train/validation split of a data folder or of Adobe pairs")
    src = sp.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="a data folder (dcp data synth / composite); splits its names")
    src.add_argument("--fg-names", help="Adobe training_fg_names.txt (needs --bg-names)")
    sp.add_argument("--bg-names", help="Adobe training_bg_names.txt")
    sp.add_argument("--per-fg", type=int, default=100, help="backgrounds per foreground (default 100)")
    sp.add_argument("--val", type=float, default=0.2, help="validation fraction (default 0.2)")
    sp.add_argument("--seed", type=int, default=7, help="seed (default 7)")
    sp.add_argument("--out", help="folder for train.txt and valid.txt (default: the --data folder)")
    sp.set_defaults(func=run_split)

    c = dsub.add_parser("composite", help="compose the Composition-1k test set (fg x bg) into a data folder")
    for name, text in (("--fg", "foreground folder"), ("--alpha", "alpha folder (named like the fg)"),
                       ("--bg", "background folder (VOC)"), ("--fg-names", "test_fg_names.txt"),
                       ("--bg-names", "test_bg_names.txt")):
        c.add_argument(name, required=True, help=text)
    c.add_argument("--per-fg", type=int, default=20, help="backgrounds per foreground (default 20)")
    c.add_argument("--trimaps", help="official trimap folder (STEM_j.png or STEM.png); default: made from alpha")
    c.add_argument("--band", type=int, default=10, help="unknown band half-width when making trimaps (default 10)")
    c.add_argument("--limit", type=int, help="only the first N composites")
    c.add_argument("--out", required=True, help="output data folder")
    c.add_argument("--force", action="store_true", help="replace an existing OUT")
    c.set_defaults(func=run_composite)


def run_synth(args: argparse.Namespace) -> int:
    out = write_synth(args.out, args.n, args.size, args.seed, tuple(args.band) if args.band else None, args.force)
    print(f"wrote {args.n} synthetic samples of {args.size}x{args.size} (seed {args.seed}) to {out}")
    return 0


def run_split(args: argparse.Namespace) -> int:
    if args.data:
        items = folder_names(args.data)
        out = Path(args.out or args.data)
        line = str
    else:
        if not args.bg_names:
            raise DCPError("--fg-names needs --bg-names")
        items = adobe.composition_pairs(io.read_names(args.fg_names), io.read_names(args.bg_names), args.per_fg)
        if not args.out:
            raise DCPError("--out is needed with --fg-names")
        out = Path(args.out)
        line = "\t".join
    train, val = adobe.split_pairs(items, args.val, args.seed)
    for name, part in (("train.txt", train), ("valid.txt", val)):
        io.write_text(out / name, "".join(line(x) + "\n" for x in part))
    print(f"split {len(items)} into {len(train)} train / {len(val)} validation (seed {args.seed}): "
          f"{out / 'train.txt'}, {out / 'valid.txt'}")
    return 0


def run_composite(args: argparse.Namespace) -> int:
    layout = adobe.AdobeLayout(Path(args.fg), Path(args.alpha), Path(args.bg), Path(args.fg_names), Path(args.bg_names))
    pairs = layout.pairs(args.per_fg)[: args.limit]
    # Composite j of a foreground is named STEM_j, as the official code names it.
    names = [f"{Path(fg).stem}_{i % args.per_fg}" for i, (fg, _) in enumerate(pairs)]
    if args.trimaps:  # fail before writing anything if a trimap is missing
        for i, (fg, _) in enumerate(pairs):
            if adobe.find_trimap(args.trimaps, fg, i % args.per_fg) is None:
                raise DCPError(f"no trimap for {fg} (#{i % args.per_fg}) in {args.trimaps}")

    def make(i: int) -> dict:
        fg_name, bg_name = pairs[i]
        fg, alpha, bg = layout.read(fg_name, bg_name)
        if args.trimaps:
            tpath = adobe.find_trimap(args.trimaps, fg_name, i % args.per_fg)
            trimap = io.read_trimap(tpath)
            io.check_same_size(alpha, trimap, Path(args.alpha) / fg_name, tpath)
        else:
            trimap = trimap_from_alpha(alpha, args.band)
        return {"image": adobe.composite_test(fg, alpha, bg), "alpha": alpha, "trimap": trimap}

    meta = {"kind": "composition", "per_fg": args.per_fg, "fg_names": str(args.fg_names),
            "bg_names": str(args.bg_names), "trimaps": args.trimaps or f"from alpha, band {args.band}"}
    out = write_folder(args.out, names, make, meta, force=args.force, desc="composite")
    print(f"wrote {len(names)} test composites to {out}")
    return 0
