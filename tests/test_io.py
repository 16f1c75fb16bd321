"""pipeline/io.py: atomic writes keep the user's umask, so a colleague sharing a data root can read the files."""

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

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


SAVE_ON_A_FULL_DISK = """
import sys, torch
from pipeline import io
from pipeline.io import DiskFull, atomic_torch_save, atomic_write_text
target = sys.argv[1]
atomic_torch_save({"w": torch.zeros(4)}, target)
for save in (lambda: atomic_torch_save({"w": torch.zeros(1 << 20)}, target),
             lambda: atomic_write_text(target + ".txt", "x" * (2 << 20))):
    try:
        save()
    except DiskFull as e:
        print(e)
# Other processes free space between a failed write and its handling: the write's own error still says why.
io._free = lambda folder: 10 << 30
try:
    atomic_torch_save({"w": torch.zeros(1 << 20)}, target)
except DiskFull as e:
    print("freed since:", e)
print(torch.load(target, weights_only=True)["w"].shape[0])
"""


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_previous_file(tmp_path):
    """On a real 1 MiB filesystem (tmpfs, mounted in a user and mount namespace of its own)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    script = f"mount -t tmpfs -o size=1m tmpfs {disk} && exec \"$0\" -c \"$1\" {disk}/model.pth"
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, sys.executable,
                           SAVE_ON_A_FULL_DISK], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    torch_line, text_line, freed, kept = proc.stdout.strip().splitlines()
    assert re.fullmatch(rf"{disk}/model.pth: no space left in {disk} while saving it \([\d,]+ bytes free\); the "
                        r"previous file is kept; free space and run again \(a training run resumes from its last "
                        r"saved state\)", torch_line)
    assert text_line.startswith(f"{disk}/model.pth.txt: no space left in {disk} while saving it (")
    assert freed.startswith(f"freed since: {disk}/model.pth: no space left in {disk} while saving it (")
    assert kept == "4"


def test_an_engine_saving_on_a_full_disk_ends_in_one_line(tmp_path):
    """A job writing its checkpoint onto a full disk (here pipeline.weights, on a 1 MiB tmpfs): exit 1, one
    `error:` line naming the file, no traceback."""
    disk = tmp_path / "disk"
    disk.mkdir()
    script = f"mount -t tmpfs -o size=1m tmpfs {disk} && exec \"$0\" -m pipeline.weights --backbone pvt_tiny " \
             f"--allow-random --output {disk}/model.pth"
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, sys.executable],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:") or "Traceback" in line]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr
    assert f"{disk}/model.pth: no space left in {disk} while saving it" in errors[0]
