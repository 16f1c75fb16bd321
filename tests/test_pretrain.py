"""pipeline/pretrain.py: training state survives a kill; the resumed run ends where an uninterrupted one does."""

import json
import signal
import subprocess
import time

import pytest
import torch

from conftest import BIN, PYTHON, ROOT, run
from pipeline import settings
from pipeline.preempt import REQUEUE_EXIT
from pipeline.pretrain import peak_lr
from pipeline.settings import PretrainSettings

# The DeiT recipe's random pieces (Mixup/CutMix, RandAugment, random erasing) and the EMA, in deterministic mode:
# the resumed run must replay them exactly.
SMALL = dict(steps=6, batch_size=4, img_size=64, checkpoint_every=2, warmup_steps=1, deterministic=True, mixup=0.8,
             cutmix=1.0, randaugment="rand-m9-mstd0.5-inc1", random_erasing=0.25, ema_decay=0.99)


def _engine(data, out, **values):
    """The engine's command for a settings file written by hand (pvt_tiny, `values` on the defaults)."""
    settings.for_engine(out / "settings.yaml", "pretrain", "pvt_tiny", **values)
    return [PYTHON, "-m", "pipeline.pretrain", "--settings", str(out / "settings.yaml"), "--data", str(data),
            "--work-dir", str(out / "state"), "--output", str(out / "model.pth"), "--metrics",
            str(out / "metrics.json"), "--log-file", str(out / "log")]


def _args(data, out):
    return _engine(data, out, **SMALL)


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
    for key in ("model", "ema"):
        a = torch.load(straight / "model.pth", weights_only=True)[key]
        b = torch.load(killed / "model.pth", weights_only=True)[key]
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), key
    assert json.loads((killed / "metrics.json").read_text())["top1"] == json.loads(
        (straight / "metrics.json").read_text())["top1"]

    # SLURM's warning signal before a time limit or preemption: state saved at once, exit 75, then resumed.
    signalled = tmp_path / "signalled"
    proc = subprocess.Popen(_args(data, signalled), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    state = signalled / "state" / "last.pth"
    deadline = time.time() + 300
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGUSR2)
    assert proc.wait(timeout=300) == REQUEUE_EXIT, proc.stderr.read()[-2000:]
    stopped_at = torch.load(state, weights_only=True)["step"]
    assert f"stop signal: state saved at step {stopped_at} of 6" in (signalled / "log").read_text()
    assert not (signalled / "model.pth").exists()
    run(_args(data, signalled))
    a = torch.load(straight / "model.pth", weights_only=True)["model"]
    b = torch.load(signalled / "model.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_changed_settings_start_fresh_and_keep_old_state(embedded_data, tmp_path):
    data = embedded_data / "imagenet-embedded"
    run(_engine(data, tmp_path, **{**SMALL, "steps": 2, "lr": 1e-3}))
    proc = run(_engine(data, tmp_path, **{**SMALL, "steps": 2, "lr": 2e-3}))
    assert "held state of a different run" in proc.stderr
    assert list(tmp_path.glob("state.stale-*"))
    # The documented command lists the folders moved aside, and deletes them with --prune.
    listed = run([PYTHON, "-m", "pipeline", "stale", "--root", str(tmp_path)]).stdout
    assert "state.stale-" in listed and "1 stale work dirs" in listed
    assert "deleted" in run([PYTHON, "-m", "pipeline", "stale", "--root", str(tmp_path), "--prune"]).stdout
    assert not list(tmp_path.glob("state.stale-*")) and (tmp_path / "state").is_dir()


def test_non_finite_loss_stops_with_the_step(embedded_data, tmp_path):
    data = embedded_data / "imagenet-embedded"
    proc = run(_engine(data, tmp_path, steps=3, batch_size=4, img_size=64, lr=1e30, lr_batch=4, warmup_steps=0),
               check=False)
    assert proc.returncode == 1
    assert "loss is" in proc.stderr and "at step" in proc.stderr
    assert not (tmp_path / "model.pth").exists()


def test_ddp_over_two_processes_matches_one_process(embedded_data, tmp_path):
    """torchrun with two CPU processes (gloo): each takes half of every global batch; the averaged gradients
    give the weights one process gets on the whole batch (LayerNorm model, no drop path: nothing per-rank). SGD,
    because Adam's normalisation turns the float noise of zero-in-theory gradients (the key bias) into steps."""
    data = embedded_data / "imagenet-embedded"
    common = dict(steps=2, batch_size=4, img_size=64, warmup_steps=1, drop_path=0.0, checkpoint_every=1,
                  deterministic=True, optimizer="sgd", lr=0.01, lr_batch=4)
    run(_engine(data, tmp_path / "one", **common))
    # --log-file: torchrun would take a bare --log for its own --log-dir
    engine = _engine(data, tmp_path / "two", **common)
    run([BIN / "torchrun", "--standalone", "--nproc-per-node", "2", *engine[1:]], env={"OMP_NUM_THREADS": "1"})
    a = torch.load(tmp_path / "one" / "model.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "two" / "model.pth", weights_only=True)["model"]
    changed = torch.load(tmp_path / "two" / "state" / "last.pth", weights_only=True)["step"]
    assert changed == 2
    assert "step 2" in (tmp_path / "two" / "log").read_text()
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5) for k in a)


def test_randaugment_posterize_at_full_magnitude_keeps_no_bits():
    """The recipes' RandAugment (`inc1`, magnitude noise) reaches magnitude 10, where posterize keeps 0 bits: a
    black image (each value masked with ~(2**8 - 1)), not an error that ends the training."""
    from PIL import Image
    from timm.data.auto_augment import AugmentOp

    import pipeline.pretrain  # noqa: F401  (its posterize op)

    image = Image.new("RGB", (8, 8), (200, 100, 50))
    assert AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)(image).getextrema() == ((0, 0),) * 3
    assert AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=0)(image).getextrema() == ((192, 192), (96, 96),
                                                                                         (48, 48))


def test_lr_scales_linearly_with_the_batch():
    # PVT §5.1: lr 1e-3 at batch 1024 (5e-4 per 512 images, official main.py).
    assert peak_lr(PretrainSettings("pvt_tiny", lr=5e-4, lr_batch=512, batch_size=1024)) == pytest.approx(1e-3)


def test_a_second_trainer_on_the_same_run_stops_in_one_line(embedded_data, tmp_path):
    """Two trainers never write one run directory at once (as with Snakemake's --nolock, or two machines)."""
    data = embedded_data / "imagenet-embedded"
    first = subprocess.Popen(_engine(data, tmp_path, **{**SMALL, "steps": 200}), cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and "starting pvt_tiny" not in ((tmp_path / "log").read_text()
                                                                    if (tmp_path / "log").exists() else ""):
            time.sleep(0.2)
        proc = run(_engine(data, tmp_path, **{**SMALL, "steps": 200}), check=False)
    finally:
        first.kill()
        first.wait()
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and f"pid {first.pid} is running this job" in errors[0] and "state" in errors[0]


def test_compiled_training_steps_give_the_eager_losses():
    """Settings `compile: true` (torch.compile, inductor on CPU): the same losses step by step as the eager model
    from the same weights and batches, and checkpoints keep the model's own keys."""
    from pipeline import pretrain

    cfg = PretrainSettings("resnet18_torchvision", steps=3, warmup_steps=1, batch_size=4, img_size=64, drop_path=0.0)
    data = pretrain.Data(train=None, val=None, per_epoch=3, total=3, warmup=1)
    torch.manual_seed(0)
    batches = [(torch.randn(4, 3, 64, 64), torch.randint(0, 1000, (4,))) for _ in range(3)]
    losses, keys = {}, {}
    for compiled in (False, True):
        torch.manual_seed(0)
        run_cfg = PretrainSettings(**{**cfg.__dict__, "compile": compiled})
        trainer = pretrain.build_trainer(run_cfg, data, torch.device("cpu"), 1)
        assert (trainer.net is not trainer.model) == compiled  # the steps run the compiled module
        trainer.model.train()
        losses[compiled] = [pretrain.train_step(trainer, run_cfg, x, y, 1) for x, y in batches]
        keys[compiled] = list(trainer.state(run_cfg)["model"])
    assert losses[True] == pytest.approx(losses[False], rel=1e-4, abs=1e-5)
    assert losses[False][0] != losses[False][-1]  # the steps train
    assert keys[True] == keys[False]
