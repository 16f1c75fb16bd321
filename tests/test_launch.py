"""pipeline/launch.py without a cluster: the distributed set-up a SLURM task hands its engine, and the local
executor (tests/test_slurm.py runs the same code on a real SLURM)."""

import json
import re
from pathlib import Path

from conftest import PYTHON
from pipeline.launch import EngineTask, engine_tail, job_name, keep_outputs, main, restore_outputs

KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "NNODES", "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS")
RECORD_ENV = f"""import json, os, sys
json.dump({{k: os.environ.get(k) for k in {KEYS!r}}}, open(f"{{sys.argv[1]}}.{{os.environ.get('RANK', 0)}}.json", "w"))
"""


def test_second_node_of_a_two_node_job_gets_its_rank_and_the_first_node_as_master(tmp_path, monkeypatch):
    """One task per node (fine-tuning): the engine on node 1 of gpu[07-08] is machine rank 1 of 2, meeting at
    gpu07; `threads` becomes OMP_NUM_THREADS."""
    (tmp_path / "record_env.py").write_text(RECORD_ENV)
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "2", "SLURM_JOB_NUM_NODES": "2",
             "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    for key in KEYS:
        monkeypatch.delenv(key, raising=False)
    assert EngineTask([PYTHON, "record_env.py", str(tmp_path / "env")], str(tmp_path), 5, threads=6, outputs=[],
                      kept=str(tmp_path / "kept"))() == 0
    seen = json.loads((tmp_path / "env.1.json").read_text())
    assert {k: seen[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "NNODES", "MASTER_ADDR")} == {
        "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "NODE_RANK": "1", "NNODES": "2", "MASTER_ADDR": "gpu07"}
    assert seen["MASTER_PORT"].isdigit() and seen["OMP_NUM_THREADS"] == "6"


def test_local_executor_runs_a_process_per_gpu_under_torchrun(tmp_path, monkeypatch):
    (tmp_path / "record_env.py").write_text(RECORD_ENV)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    prefix = tmp_path / "env"
    code = main(["--run-dir", str(tmp_path), "--gpus", "2", "--output", f"{prefix}.1.json", "--", PYTHON, "-m",
                 "record_env", str(prefix)])
    assert code == 0
    assert [json.loads((tmp_path / f"env.{rank}.json").read_text())["WORLD_SIZE"] for rank in (0, 1)] == ["2", "2"]


def test_a_declared_output_the_command_did_not_write_is_one_error_line(tmp_path, capsys):
    code = main(["--run-dir", str(tmp_path), "--output", str(tmp_path / "model.pth"), "--", PYTHON, "-c", "pass"])
    assert code == 1
    assert capsys.readouterr().err.strip() == f"launch: the job completed but did not write {tmp_path / 'model.pth'}"


# A failed job's stderr as SLURM writes it: the engine's log lines, tqdm frames joined by carriage returns,
# submitit's traceback of the task, and slurmstepd's note.
JOB_STDERR = (
    "2026-12-01 03:00:00 INFO starting pvt_tiny: 300 steps\n"
    "pretrain pvt_tiny:   1%|          | 3/300 [00:02<03:10,  1.56it/s]\r"
    "pretrain pvt_tiny:   2%|1         | 6/300 [00:04<03:08,  1.56it/s]\r"
    "pretrain pvt_tiny:   3%|2         | 9/300 [00:06<03:05,  1.57it/s]\n"
    "2026-12-01 03:00:07 ERROR loss is nan at step 9 (lr 1.00e-03); lower the lr or check the data\n"
    "submitit ERROR (2026-12-01 03:00:08,000) - Submitted job triggered an exception\n"
    "Traceback (most recent call last):\n"
    '  File "/usr/lib/python3.11/runpy.py", line 198, in _run_module_as_main\n'
    "    return _run_code(code, main_globals, None,\n"
    "pipeline.launch.LaunchError: python -m pipeline.pretrain ... exited 1 in job 12\n"
    "slurmstepd: error: *** JOB 12 ON node CANCELLED AT 2026-12-01T03:00:09 ***\n")


def test_a_failed_jobs_tail_is_the_engines_lines_without_progress_frames_or_traceback(tmp_path):
    (tmp_path / "12_0_log.err").write_text(JOB_STDERR)
    assert engine_tail(tmp_path / "12_0_log.err").splitlines() == [
        "2026-12-01 03:00:00 INFO starting pvt_tiny: 300 steps",
        "2026-12-01 03:00:07 ERROR loss is nan at step 9 (lr 1.00e-03); lower the lr or check the data",
        "slurmstepd: error: *** JOB 12 ON node CANCELLED AT 2026-12-01T03:00:09 ***"]


def test_a_completed_jobs_outputs_come_back_after_snakemake_removed_them(tmp_path):
    outputs = [str(tmp_path / "model.pth"), str(tmp_path / "metrics.json")]
    for output in outputs:
        Path(output).write_text(output)
    keep_outputs(outputs, tmp_path / "slurm" / "outputs")
    for output in outputs:
        Path(output).unlink()  # what Snakemake does to the outputs of a job it marked incomplete
    assert restore_outputs(outputs, tmp_path / "slurm" / "outputs")
    assert [Path(o).read_text() for o in outputs] == outputs
    assert not restore_outputs([str(tmp_path / "other.pth")], tmp_path / "slurm" / "outputs")


def test_the_job_name_carries_a_key_of_the_run_folder(tmp_path):
    name = job_name(tmp_path / "run", "pvt_tiny")
    assert re.fullmatch(r"pvt_tiny\.[0-9a-f]{10}", name) and name != job_name(tmp_path / "other", "pvt_tiny")
