"""pipeline/launch.py and profiles/slurm on a real single-node SLURM (envs/slurm_cluster.py, 2 fake GPUs):
submission with a GPU request, preemption (signal, save, requeue, exact resume), a crash reported with its log,
and re-attaching after Snakemake restarts."""

import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest
import torch

from conftest import BIN, PYTHON, ROOT, copy_project, run

# One cluster per session: `make test` runs each test file on one pytest-xdist worker (--dist loadfile).
SETTINGS = {"executor": "slurm", "cpus_per_task": 1, "mem_gb_per_task": 2, "signal_delay_s": 40, "max_timeouts": 3,
            "poll_s": 1}


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    if os.geteuid() != 0 and not shutil.which("slurmctld", path="/usr/sbin:/usr/bin"):
        pytest.skip("SLURM is not installed and installing it needs root (see envs/slurm_cluster.py)")
    state = tmp_path_factory.mktemp("slurm")
    cluster = [PYTHON, ROOT / "envs" / "slurm_cluster.py"]
    proc = run([*cluster, "start", "--state-dir", state], timeout=600)
    env = {"SLURM_CONF": proc.stdout.strip().split("=", 1)[1], "USER": os.environ.get("USER") or "root"}
    yield env
    run([*cluster, "stop", "--state-dir", state])


def _sacct(env, job_id, fields):
    return run(["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", fields], env=env).stdout.strip()


def _restarts(env, job_id) -> int:
    """How often SLURM restarted (requeued) the job; slurmctld keeps finished jobs for MinJobAge (300 s)."""
    shown = run(["scontrol", "show", "job", "-o", str(job_id)], env=env).stdout
    return int(re.search(r"\bRestarts=(\d+)", shown).group(1))


def _engine(data, out, steps):
    return [PYTHON, "-m", "pipeline.pretrain", "--model", "pvt_tiny", "--data", str(data), "--steps", str(steps),
            "--batch-size", "4", "--img-size", "64", "--warmup-steps", "1", "--checkpoint-every", "1000",
            "--deterministic", "--work-dir", str(out / "state"), "--output", str(out / "model.pth"),
            "--metrics", str(out / "metrics.json"), "--log-file", str(out / "log")]


def _launch(out, engine, env, minutes=30, settings=SETTINGS):
    cmd = [PYTHON, "-m", "pipeline.launch", "--cluster", json.dumps(settings), "--run-dir", str(out), "--gpus", "1",
           "--minutes", str(minutes), "--output", str(out / "model.pth"), "--", *engine]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(path, text, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.5)
    raise AssertionError(f"{text!r} did not appear in {path} within {timeout} s")


def _job_id(out):
    return json.loads((out / "slurm" / "job.json").read_text())["job_id"]


def test_smoke_pretraining_through_the_slurm_profile_requests_a_gpu(slurm, embedded_data, tmp_path):
    project = copy_project(tmp_path / "project")
    (project / "cluster-test.yaml").write_text(json.dumps({"cluster": SETTINGS}))
    target = "results/pretrain/imagenet-embedded/pvt_tiny/pvt/seed0/model.pth"
    proc = run([BIN / "snakemake", "--profile", "profiles/slurm", "--configfiles", "config/config.yaml",
                "cluster-test.yaml", "--config", f"data_root={embedded_data}", "--", target], cwd=project,
               env=slurm, timeout=900)
    assert "launch: submitted slurm job" in proc.stderr
    job_id = _job_id(project / target.rsplit("/", 1)[0])
    # Smoke jobs ask for one GPU (experiments.SMOKE_RESOURCES); the fake gres shows in the accounting.
    assert _sacct(slurm, job_id, "State,ReqTRES").startswith("COMPLETED|") and "gres/gpu=1" in _sacct(
        slurm, job_id, "ReqTRES")
    assert (project / target).exists()


def test_preempted_job_requeues_and_resumes_to_identical_weights(slurm, embedded_data, tmp_path):
    data = embedded_data / "imagenet-embedded"
    straight, preempted = tmp_path / "straight", tmp_path / "preempted"
    run(_engine(data, straight, 60))
    proc = _launch(preempted, _engine(data, preempted, 60), slurm)
    _wait_for(preempted / "log", "starting pvt_tiny")  # the engine's stop handler is in place by then
    job_id = _job_id(preempted)
    run(["scancel", "--signal=USR2", job_id], env=slurm)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    log = (preempted / "log").read_text()
    assert "stop signal: state saved at step" in log and "resuming from" in log, log
    assert _job_id(preempted) == job_id and _restarts(slurm, job_id) >= 1
    a = torch.load(straight / "model.pth", weights_only=True)["model"]
    b = torch.load(preempted / "model.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert run(["squeue", "-h", "-j", job_id], env=slurm, check=False).stdout.strip() == ""


def test_crashed_job_is_reported_with_its_log_within_seconds(slurm, embedded_data, tmp_path):
    out = tmp_path / "crash"
    engine = _engine(embedded_data / "imagenet-embedded", out, 4)
    engine[engine.index("--data") + 1] = str(tmp_path / "no-such-data")
    start = time.time()
    proc = _launch(out, engine, slurm)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1
    last = output.strip().splitlines()
    assert any(line.startswith("launch: slurm job") and "ended FAILED" in line for line in last), output
    assert "no-such-data" in output  # the engine's own error, from the job's log
    assert time.time() - start < 120


def test_restarted_snakemake_attaches_to_the_running_job(slurm, embedded_data, tmp_path):
    project = copy_project(tmp_path / "project")
    (project / "cluster-test.yaml").write_text(json.dumps({"cluster": SETTINGS}))
    target = "results/pretrain/imagenet-embedded/pvt_tiny/pvt/seed0/model.pth"
    cmd = [BIN / "snakemake", "--profile", "profiles/slurm", "--configfiles", "config/config.yaml",
           "cluster-test.yaml", "--config", f"data_root={embedded_data}", "--", target]
    env = {**os.environ, "PYTHONPATH": str(project), **slurm}
    first = subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    record = project / target.rsplit("/", 1)[0] / "slurm" / "job.json"
    deadline = time.time() + 120
    while not record.exists() and time.time() < deadline:
        time.sleep(0.5)
    job_id = _job_id(record.parent.parent)
    os.killpg(first.pid, signal.SIGTERM)  # the controller goes away; the SLURM job does not
    first.wait(timeout=60)
    assert run(["squeue", "-h", "-j", job_id, "-o", "%i"], env=slurm).stdout.split() == [job_id]
    second = run(cmd, cwd=project, env=slurm, timeout=900)
    assert f"attaching to slurm job {job_id}" in second.stderr
    assert "submitted slurm job" not in second.stderr
    assert _sacct(slurm, job_id, "State") == "COMPLETED"
    assert (project / target).exists()

