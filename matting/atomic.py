"""Atomic writes: a reader (or a crash) sees the old file or folder, or the complete new one.

- :func:`new_file` yields a binary handle on a temp file next to the target; on success the data
  is flushed and fsynced, the temp file renamed onto the target and the folder fsynced (so the
  rename itself survives a power cut). On error the temp file goes and the target is untouched.
- :func:`new_folder` yields an empty temp folder next to the target to fill; on success every
  file in it is fsynced, the old target is renamed ASIDE (``.NAME.old``), the new folder renamed
  into place, and only then the old one deleted. A crash before the swap leaves the old folder
  where it was; a crash between the two renames leaves it aside, and the next ``new_folder``
  for that target (or :func:`recover_folder`) puts it back.
- :func:`move_file` publishes a file made elsewhere (e.g. by an exporter) the same way;
  :func:`write_figure` renders a matplotlib figure and writes it like any file.

Every writer of the project (checkpoints, images, reports, artifacts, data sets, ONNX files) goes
through here. It imports nothing of ``matting`` (only ``passes.errors``), so ``compiler`` may use
it without loading the matting application.

>>> import tempfile, pathlib
>>> tmp = tempfile.TemporaryDirectory()
>>> target = pathlib.Path(tmp.name) / "out"
>>> with new_folder(target) as d:
...     _ = (d / "a.txt").write_text("new")
>>> sorted(p.name for p in target.iterdir()), (target / "a.txt").read_text()
(['a.txt'], 'new')
>>> write_text(target / "b.txt", "more")
>>> sorted(p.name for p in pathlib.Path(tmp.name).iterdir())  # no temp or aside left behind
['out']
>>> tmp.cleanup()
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from passes.errors import DCPError


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def new_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """``with new_file(p) as f: f.write(...)``: ``p`` is replaced only once ``f`` is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with new_file(path) as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def write_figure(path: str | os.PathLike, fig, **savefig_kwargs) -> Path:
    """Render a matplotlib figure (format from the suffix, PNG by default) and write it atomically;
    the figure is closed."""
    import io
    import matplotlib.pyplot as plt
    path = Path(path)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=path.suffix.lstrip(".") or "png", **savefig_kwargs)
    finally:
        plt.close(fig)
    write_bytes(path, buf.getvalue())
    return path


def move_file(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Rename a finished file ``src`` onto ``dest`` (same file system), durably."""
    src, dest = Path(src), Path(dest)
    _fsync_file(src)
    os.replace(src, dest)
    _fsync_dir(dest.parent)
    return dest


@contextlib.contextmanager
def scratch_folder(near: str | os.PathLike) -> Iterator[Path]:
    """A temp folder next to ``near`` (same file system, so renames out of it are atomic),
    removed with whatever is left in it on exit."""
    near = Path(near)
    near.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=near.parent, prefix=f".{near.name}.", suffix=".tmp"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _aside(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def recover_folder(path: str | os.PathLike) -> None:
    """Undo an interrupted swap: put an aside copy back if the target is missing, else drop it."""
    path = Path(path)
    old = _aside(path)
    if not old.exists():
        return
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(old, path)
        _fsync_dir(path.parent)


@contextlib.contextmanager
def new_folder(path: str | os.PathLike) -> Iterator[Path]:
    """``with new_folder(p) as d: fill d``: ``p`` becomes ``d`` only once the block succeeded."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DCPError(f"{path} exists and is not a folder")
    recover_folder(path)
    with scratch_folder(path) as tmp:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync_file(f)
        _fsync_dir(tmp)
        _swap_in(tmp, path)


def _swap_in(tmp: Path, path: Path) -> None:
    if not path.exists():
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        return
    old = _aside(path)
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)  # the new folder could not go in: the old one goes back
        raise
    _fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)
