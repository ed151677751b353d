"""The ``dcp`` command line: one entry point, one module per subcommand in ``compiler/commands``.

Each command module defines ``register(subparsers)`` and sets ``func`` on its parser. Errors
users can fix (bad files, arguments, inputs) surface as one line on stderr and exit code 2;
``--verbose`` shows the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback

from passes.errors import DCPError

USER_ERRORS = (DCPError, FileNotFoundError, IsADirectoryError, PermissionError, ValueError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcp", description="Distillation-based channel pruning compiler for alpha matting")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from . import commands
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):  # shared helpers, not commands
            continue
        importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as e:
        if args.verbose:
            traceback.print_exc()
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"dcp {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dcp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
