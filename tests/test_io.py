"""pipeline/io.py: atomic writes keep the user's umask, so a colleague sharing a data root can read the files."""

import os

import pytest

from pipeline.io import atomic_torch_save, atomic_write_json, atomic_write_text, umask


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_files_get_the_mode_the_umask_gives_new_files(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        assert umask() == mask and umask() == mask  # reading it leaves it as it was
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_write_json(tmp_path / "b.json", {"a": 1})
        atomic_torch_save({"w": 1}, tmp_path / "c.pth")
        (tmp_path / "plain.txt").write_text("x")  # what open() gives a new file under this umask
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {
        "a.txt": mode, "b.json": mode, "c.pth": mode, "plain.txt": mode}
