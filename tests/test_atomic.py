"""matting.atomic: files and folders are the old ones or the complete new ones, crash or not."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from matting import atomic
from passes.errors import DCPError

ROOT = Path(__file__).resolve().parents[1]


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def _old_folder(tmp_path: Path) -> Path:
    target = tmp_path / "out"
    target.mkdir()
    (target / "a.txt").write_text("old a")
    (target / "sub").mkdir()
    (target / "sub" / "b.txt").write_text("old b")
    return target


def _crash(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that dies with os._exit (no cleanup, no finally)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=120)


def test_file_is_replaced_whole_and_no_temp_is_left(tmp_path):
    atomic.write_text(tmp_path / "f.txt", "one")
    atomic.write_bytes(tmp_path / "f.txt", b"two")
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"] and (tmp_path / "f.txt").read_text() == "two"


def test_an_error_mid_write_keeps_the_old_file(tmp_path):
    atomic.write_text(tmp_path / "f.txt", "old")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic.new_file(tmp_path / "f.txt") as f:
            f.write(b"half of the new")
            raise RuntimeError("disk on fire")
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"] and (tmp_path / "f.txt").read_text() == "old"


def test_a_crash_mid_write_keeps_the_old_file(tmp_path):
    atomic.write_text(tmp_path / "f.txt", "old")
    r = _crash(f"""
        import os
        from matting import atomic
        with atomic.new_file({str(tmp_path / 'f.txt')!r}) as f:
            f.write(b"half of the new")
            f.flush()
            os._exit(9)
    """)
    assert r.returncode == 9, r.stderr
    assert (tmp_path / "f.txt").read_text() == "old"


def test_file_and_its_folder_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name file descriptors")
    atomic.write_text(tmp_path / "f.txt", "x")
    assert synced[0].startswith(str(tmp_path / ".f.txt.")) and synced[-1] == str(tmp_path)


def test_folder_is_swapped_in_whole(tmp_path):
    target = _old_folder(tmp_path)
    with atomic.new_folder(target) as d:
        assert not (d / "a.txt").exists()
        (d / "c.txt").write_text("new c")
    assert _tree(target) == {"c.txt": "new c"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_an_error_mid_fill_keeps_the_old_folder(tmp_path):
    target = _old_folder(tmp_path)
    before = _tree(target)
    with pytest.raises(KeyboardInterrupt):
        with atomic.new_folder(target) as d:
            (d / "a.txt").write_text("new a")
            raise KeyboardInterrupt
    assert _tree(target) == before and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_crash_mid_fill_keeps_the_old_folder(tmp_path):
    target = _old_folder(tmp_path)
    before = _tree(target)
    r = _crash(f"""
        import os
        from matting import atomic
        with atomic.new_folder({str(target)!r}) as d:
            (d / "a.txt").write_text("new a")
            os._exit(9)
    """)
    assert r.returncode == 9, r.stderr
    assert _tree(target) == before


def test_a_crash_between_the_two_renames_is_recovered_by_the_next_writer(tmp_path):
    target = _old_folder(tmp_path)
    before = _tree(target)
    r = _crash(f"""
        import os
        from matting import atomic
        real = os.replace
        def replace(src, dst):
            if str(src).endswith(".tmp"):  # the new folder is about to go in: die first
                os._exit(9)
            real(src, dst)
        os.replace = replace
        with atomic.new_folder({str(target)!r}) as d:
            (d / "a.txt").write_text("new a")
    """)
    assert r.returncode == 9, r.stderr
    assert not target.exists() and _tree(tmp_path / ".out.old") == before  # the old folder survived aside
    atomic.recover_folder(target)
    assert _tree(target) == before and not (tmp_path / ".out.old").exists()


def test_a_failed_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    target = _old_folder(tmp_path)
    before = _tree(target)
    real = os.replace

    def replace(src, dst):
        if str(src).endswith(".tmp"):
            raise OSError("rename refused")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="rename refused"):
        with atomic.new_folder(target) as d:
            (d / "a.txt").write_text("new a")
    assert _tree(target) == before and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_file_in_the_way_of_a_folder_is_refused(tmp_path):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(DCPError, match="not a folder"):
        with atomic.new_folder(tmp_path / "out"):
            pass
    assert (tmp_path / "out").read_text() == "a file"
