"""pipeline/pretrain.py: training state survives a kill; the resumed run ends where an uninterrupted one does."""

import json
import signal
import subprocess
import time

import torch

from conftest import PYTHON, ROOT, run

SMALL = ["--model", "pvt_tiny", "--steps", "6", "--batch-size", "4", "--img-size", "64",
         "--checkpoint-every", "2", "--warmup-steps", "1"]


def _args(data, out):
    return [PYTHON, "-m", "pipeline.pretrain", *SMALL, "--data", str(data), "--work-dir", str(out / "state"),
            "--output", str(out / "model.pth"), "--metrics", str(out / "metrics.json"), "--log", str(out / "log")]


def test_killed_run_resumes_to_identical_weights(embedded_data, tmp_path):
    data = embedded_data / "imagenet-embedded"
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run(_args(data, straight))

    proc = subprocess.Popen(_args(data, killed), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = killed / "state" / "last.pth"
    deadline = time.time() + 300
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists(), "no checkpoint was written before the kill"
    saved_step = torch.load(state, weights_only=True)["step"]
    assert 2 <= saved_step < 6
    assert not (killed / "model.pth").exists()

    run(_args(data, killed))
    log = (killed / "log").read_text()
    assert f"resuming from {state} at step {saved_step} of 6" in log
    a = torch.load(straight / "model.pth", weights_only=True)["model"]
    b = torch.load(killed / "model.pth", weights_only=True)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((killed / "metrics.json").read_text())["top1"] == json.loads(
        (straight / "metrics.json").read_text())["top1"]


def test_changed_settings_start_fresh_and_keep_old_state(embedded_data, tmp_path):
    data = embedded_data / "imagenet-embedded"
    first = _args(data, tmp_path) + ["--steps", "2", "--lr", "1e-3"]
    run(first)
    proc = run(first[:-1] + ["2e-3"])
    assert "held state of a different run" in proc.stderr
    assert list(tmp_path.glob("state.stale-*"))


def test_non_finite_loss_stops_with_the_step(embedded_data, tmp_path):
    data = embedded_data / "imagenet-embedded"
    proc = run([PYTHON, "-m", "pipeline.pretrain", "--model", "pvt_tiny", "--steps", "3", "--batch-size", "4",
                "--img-size", "64", "--lr", "1e30", "--warmup-steps", "0", "--data", str(data),
                "--work-dir", str(tmp_path / "s"), "--output", str(tmp_path / "m.pth"),
                "--metrics", str(tmp_path / "m.json")], check=False)
    assert proc.returncode == 1
    assert "loss is" in proc.stderr and "at step" in proc.stderr
    assert not (tmp_path / "m.pth").exists()
