"""pipeline/launch.py and profiles/slurm on a real single-node SLURM (envs/slurm_cluster.py, 2 fake GPUs):
submission with a GPU request, preemption (signal, save, requeue, exact resume), the time limit, fine-tuning
over two processes, a crash reported with its log, re-attaching after Snakemake restarts (SIGTERM, SIGKILL, a kill
before the job was recorded) and reusing a job that completed meanwhile, refused and pending jobs, cancelled ones."""

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
from pipeline import settings

# One cluster per session: `make test` runs each test file on one pytest-xdist worker (--dist loadfile).
SETTINGS = {"executor": "slurm", "cpus_per_gpu": 1, "mem_gb_per_gpu": 2, "signal_delay_s": 40, "max_timeouts": 3,
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
    settings.for_engine(out / "settings.yaml", "pretrain", "pvt_tiny", steps=steps, batch_size=4, img_size=64,
                        warmup_steps=1, checkpoint_every=1000, deterministic=True)
    return [PYTHON, "-m", "pipeline.pretrain", "--settings", str(out / "settings.yaml"), "--data", str(data),
            "--work-dir", str(out / "state"), "--output", str(out / "model.pth"),
            "--metrics", str(out / "metrics.json"), "--log-file", str(out / "log")]


def _finetune_engine(data, out, iters, gpus):
    """A smoke Mask R-CNN fine-tuning from random weights, `gpus` processes through detectron2's launch."""
    settings.for_engine(out / "settings.yaml", "finetune", "pvt_tiny", framework="mask_rcnn", iters=iters,
                        batch_size=2, short_side=[128], max_size=192, roi_batch_size_per_image=64,
                        rpn_post_nms_topk_train=200, warmup_iters=1, checkpoint_every=1000)
    return [PYTHON, "-m", "pipeline.finetune", "--settings", str(out / "settings.yaml"), "--pretrained", "",
            "--data", str(data), "--gpus", str(gpus), "--work-dir", str(out / "state"), "--output",
            str(out / "model.pth"), "--log-file", str(out / "log")]


def _launch(out, engine, env, minutes=30, settings=SETTINGS, gpus=1, tasks_per_node=None):
    tasks = [] if tasks_per_node is None else ["--tasks-per-node", str(tasks_per_node)]
    cmd = [PYTHON, "-m", "pipeline.launch", "--cluster", json.dumps(settings), "--run-dir", str(out), "--gpus",
           str(gpus), *tasks, "--minutes", str(minutes), "--output", str(out / "model.pth"), "--", *engine]
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
                "cluster-test.yaml", "--config", f"data_root={embedded_data}", "scale=smoke", "--", target],
               cwd=project, env=slurm, timeout=900)
    assert "launch: submitted slurm job" in proc.stderr
    job_id = _job_id(project / target.rsplit("/", 1)[0])
    # Smoke jobs ask for one GPU (jobs.SMOKE_RESOURCES); the fake gres shows in the accounting.
    assert _sacct(slurm, job_id, "State,ReqTRES").startswith("COMPLETED|") and "gres/gpu=1" in _sacct(
        slurm, job_id, "ReqTRES")
    assert (project / target).exists()
    # What the report's GPU-hours under SLURM read: sacct's record of the job, kept beside its outputs.
    accounting = json.loads((project / target).with_name("slurm").joinpath("accounting.json").read_text())
    assert [(e["JobID"], e["State"]) for e in accounting["sacct"]][-1] == (job_id, "COMPLETED")
    assert int(accounting["sacct"][-1]["ElapsedRaw"]) > 0 and "gres/gpu=1" in accounting["sacct"][-1]["AllocTRES"]


def test_preempted_job_requeues_and_resumes_to_identical_weights(slurm, embedded_data, tmp_path):
    data = embedded_data / "imagenet-embedded"
    straight, preempted = tmp_path / "straight", tmp_path / "preempted"
    run(_engine(data, straight, 60), env={"OMP_NUM_THREADS": "1"})  # the job's threads (cpus_per_gpu)
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


LIMIT_STEPS = 600


def test_time_limit_signals_saves_requeues_and_finishes_with_two_ddp_tasks(slurm, embedded_data, tmp_path):
    """A 2-minute job of two tasks (one per GPU, DDP over torch.distributed from the job's environment) gets
    USR2 60 s before its limit, saves, and is requeued under its id. Once it has been, its limit is raised so that
    the rest of the training finishes however loaded this machine is. The run must outlast the first slot even on
    an idle machine: 300 steps took 45 s here unloaded (measured: 6.7 steps/s over two processes) and ended before
    the signal, so it trains 600 (about 90 s unloaded, 200 s at the 3 steps/s measured under the full suite)."""
    out = tmp_path / "limit"
    settings = {**SETTINGS, "signal_delay_s": 60, "max_timeouts": 2}
    proc = _launch(out, _engine(embedded_data / "imagenet-embedded", out, LIMIT_STEPS), slurm, minutes=2,
                   settings=settings, gpus=2)
    deadline = time.time() + 400
    while not (out / "slurm" / "job.json").exists() and time.time() < deadline:
        time.sleep(0.5)
    job_id = _job_id(out)
    while _restarts(slurm, job_id) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(2)
    assert _restarts(slurm, job_id) >= 1, "the job was not requeued at its time limit"
    run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=20"], env=slurm)
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output
    log = (out / "log").read_text()
    assert "stop signal: state saved at step" in log and "resuming from" in log, log
    assert "this job is timed-out" in (out / "slurm" / f"{job_id}_0_log.err").read_text()
    assert "gres/gpu=2" in _sacct(slurm, job_id, "ReqTRES") and _job_id(out) == job_id
    assert torch.load(out / "model.pth", weights_only=True)["steps"] == LIMIT_STEPS


def test_finetuning_over_two_processes_saves_on_the_signal_and_resumes(slurm, embedded_data, tmp_path):
    """One task with 2 GPUs; the engine starts a process per GPU through detectron2's launch. USR2 reaches both
    (they lead their own process group, which the launcher signals too); the state is saved after that iteration,
    and the requeued job resumes at the next one."""
    out = tmp_path / "finetune"
    proc = _launch(out, _finetune_engine(embedded_data / "coco-embedded", out, 4, gpus=2), slurm, gpus=2,
                   tasks_per_node=1)
    _wait_for(out / "log", "starting mask_rcnn")
    job_id = _job_id(out)
    run(["scancel", "--signal=USR2", job_id], env=slurm)
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output
    log = (out / "log").read_text()
    assert "over 2 process(es)" in log, log
    saved = re.search(r"stop signal: state saved after iteration (\d+) of 4", log)
    assert saved and f"resuming from {out / 'state'}/model_{int(saved.group(1)) - 1:07d}.pth after iteration " \
        f"{saved.group(1)} of 4" in log, log
    assert _restarts(slurm, job_id) >= 1 and "gres/gpu=2" in _sacct(slurm, job_id, "ReqTRES")
    final = torch.load(out / "model.pth", weights_only=True)
    assert final["iters"] == 4 and final["config"]["world_size"] == 2


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


def _snakemake_until(cmd, project, env, text, log):
    """Snakemake started in the background, stopped here once `text` is in its log (its own process group)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    _wait_for(log, text, timeout=180)
    return proc


def test_restarted_snakemake_attaches_to_its_job_after_any_kill_and_reuses_it_once_completed(slurm, embedded_data,
                                                                                             tmp_path):
    project = copy_project(tmp_path / "project")
    (project / "cluster-test.yaml").write_text(json.dumps({"cluster": SETTINGS, "smoke": {"quick": {"pretrain": {
        "steps": 100, "checkpoint_every": 50}}}}))
    target = "results/pretrain/imagenet-embedded/pvt_tiny/pvt/seed0/model.pth"
    run_dir = project / target.rsplit("/", 1)[0]
    cmd = [BIN / "snakemake", "--profile", "profiles/slurm", "--configfiles", "config/config.yaml",
           "cluster-test.yaml", "--config", f"data_root={embedded_data}", "scale=smoke", "--", target]
    env = {**os.environ, "PYTHONPATH": str(project), **slurm}
    unlock = [*cmd[:-2], "--unlock", *cmd[-2:]]

    def kill(proc, signum):
        os.killpg(proc.pid, signum)  # the controller goes away; the SLURM job does not
        proc.wait(timeout=60)

    first = _snakemake_until(cmd, project, env, "launch: submitted slurm job", tmp_path / "first.log")
    job_id = _job_id(run_dir)
    deadline = time.time() + 120
    # Suspended only once its srun step runs: stopped while srun still confirms the allocation with slurmctld, the
    # step fails on resume ("Unable to confirm allocation ... Unexpected missing socket error").
    while f"{job_id}.0" not in run(["squeue", "-h", "-s", "-j", job_id, "-o", "%i"], env=slurm).stdout.split():
        assert time.time() < deadline
        time.sleep(0.5)
    run(["scontrol", "suspend", job_id], env=slurm)  # it waits for the restarts below, however loaded the machine
    kill(first, signal.SIGTERM)
    second = _snakemake_until(cmd, project, env, f"launch: attaching to slurm job {job_id}", tmp_path / "second.log")
    kill(second, signal.SIGKILL)
    # As if Snakemake had been killed between sbatch returning and the job's record being written.
    (run_dir / "slurm" / "job.json").unlink()
    locked = run(cmd, cwd=project, env=env, check=False)
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr  # as the README says
    run(unlock, cwd=project, env=env)
    third = _snakemake_until(cmd, project, env, f"launch: attaching to slurm job {job_id}", tmp_path / "third.log")
    kill(third, signal.SIGKILL)
    run(["scontrol", "resume", job_id], env=slurm)
    deadline = time.time() + 600
    while run(["squeue", "-h", "-j", job_id, "-o", "%i"], env=slurm).stdout.strip():
        assert time.time() < deadline
        time.sleep(1)
    run(unlock, cwd=project, env=env)
    last = run(cmd, cwd=project, env=env, timeout=900)
    assert f"launch: reusing completed slurm job {job_id}" in last.stderr and "submitted slurm job" not in last.stderr
    assert "submitted slurm job" not in (tmp_path / "second.log").read_text() + (tmp_path / "third.log").read_text()
    name = json.loads((run_dir / "slurm" / "job.json").read_text())["name"]
    jobs = run(["sacct", "-n", "-X", "-P", "-S", "now-2hours", "--name", name, "-o", "JobID,State"],
               env=slurm).stdout.split()
    assert jobs == [f"{job_id}|COMPLETED"]
    assert torch.load(project / target, weights_only=True)["steps"] == 100


def test_a_request_no_node_can_meet_is_one_line_naming_the_keys(slurm, embedded_data, tmp_path):
    out = tmp_path / "huge"
    proc = _launch(out, _engine(embedded_data / "imagenet-embedded", out, 4), slurm,
                   settings={**SETTINGS, "mem_gb_per_gpu": 100000})
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1 and output.count("\n") == 1, output
    assert re.fullmatch(r"launch: SLURM refused the job \(sbatch: error: .+\); it asks 1 node\(s\) with 1 GPU\(s\), "
                        r"1 CPUs and 100000 GB each: lower cluster.cpus_per_gpu or cluster.mem_gb_per_gpu, or set "
                        r"cluster.partition, in profiles/slurm/cluster.yaml\n", output), output


def test_a_pending_job_shows_why_and_a_cancelled_one_the_engines_last_lines(slurm, embedded_data, tmp_path):
    out = tmp_path / "cancel"
    run(["scontrol", "update", "PartitionName=debug", "State=DOWN"], env=slurm)
    try:
        proc = _launch(out, _engine(embedded_data / "imagenet-embedded", out, 10000), slurm)
        job_id = None
        deadline = time.time() + 120
        while job_id is None:
            assert time.time() < deadline
            time.sleep(0.5)
            job_id = _job_id(out) if (out / "slurm" / "job.json").exists() else None
        time.sleep(3)
    finally:
        run(["scontrol", "update", "PartitionName=debug", "State=UP"], env=slurm)
    _wait_for(out / "log", "starting pvt_tiny")
    run(["scancel", job_id], env=slurm)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert f"launch: slurm job {job_id} PENDING (PartitionDown)" in output
    error = output[output.index(f"launch: slurm job {job_id} ended CANCELLED"):]
    assert "the engine's last lines:" in error and "starting pvt_tiny: 10000 steps" in error, error
    assert "Traceback" not in error and "it/s]" not in error and "s/it]" not in error
