"""pipeline/launch.py without a cluster: the distributed set-up a SLURM task hands its engine, and the local
executor (tests/test_slurm.py runs the same code on a real SLURM)."""

import json

from conftest import PYTHON
from pipeline.launch import EngineTask, main

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
    assert EngineTask([PYTHON, "record_env.py", str(tmp_path / "env")], str(tmp_path), 5, threads=6)() == 0
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
