"""pipeline/plan.py: the plan lists the jobs and GPU requests that Snakemake's own dry run lists."""

import re

import pytest

from conftest import BIN, PYTHON, copy_project, run
from pipeline import plan


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return copy_project(tmp_path_factory.mktemp("plan") / "project")


def _dry_run_jobs(stdout: str) -> dict[str, tuple[str, int, int, int]]:
    """first output -> (rule, gpu, nodes, runtime) for every job of Snakemake's dry-run listing."""
    jobs = {}
    for block in re.split(r"\n(?=rule |localrule )", stdout):
        head = re.match(r"(?:local)?rule (\w+):", block)
        output = re.search(r"^\s+output: ([^,\n]+)", block, re.M)
        if not head or not output:
            continue
        res = dict(re.findall(r"(\w+)=(\d+)", (re.search(r"^\s+resources: (.+)$", block, re.M) or [""])[0]))
        jobs[output.group(1)] = (head.group(1), int(res.get("gpu", 0)), int(res.get("nodes", 1)),
                                 int(res.get("runtime", 0)))
    return jobs


def test_plan_matches_the_dry_run_of_pvt_table4(project):
    dry = _dry_run_jobs(run([BIN / "snakemake", "--profile", "profiles/local", "-n", "pvt_table4", "--config",
                             "data_root=data"], cwd=project).stdout)
    planned = plan.plan(["pvt_table4"], plan.load_config(["data_root=data"]), root=project)
    training = {o: j for o, j in dry.items() if j[0] in ("pretrain", "import_weights", "finetune", "evaluate",
                                                          "gather_table")}
    assert {r["output"] for r in planned["jobs"]} == set(training)
    for r in planned["jobs"]:
        rule, gpu, nodes, minutes = training[r["output"]]
        assert r["rule"] == rule
        if rule in ("pretrain", "finetune", "evaluate"):
            assert (r["gpus_per_node"], r["nodes"], r["hours"] * 60) == (gpu, nodes, minutes)
    # PVT §5.1/§5.2: 8 GPUs per ImageNet and COCO job; the four PVT variants are pretrained, the ResNets imported.
    rules = [r["rule"] for r in planned["jobs"]]
    assert (rules.count("pretrain"), rules.count("import_weights"), rules.count("finetune")) == (4, 5, 18)
    assert planned["total"]["gpu_hours"] == sum(r["gpu_hours"] for r in planned["jobs"])


def test_plan_command_prints_gpu_hours_and_submits_nothing(project):
    proc = run([PYTHON, "-m", "pipeline", "plan", "table5", "--config", "paper=pvt", "data_root=data"], cwd=project)
    assert "GPU-hours" in proc.stdout and "Nothing was submitted." in proc.stdout
    assert "results/tables/pvt_table5.json" in proc.stdout
    assert not (project / "results").exists()


def test_unknown_target_is_one_line_with_the_valid_ones(project):
    proc = run([PYTHON, "-m", "pipeline", "plan", "pvt_table12"], cwd=project, check=False)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "pvt_table12" in proc.stderr and "pvt_table4" in proc.stderr and "hornet_imagenet" in proc.stderr


def test_plan_of_a_papers_releases_matches_its_dry_run_and_trains_nothing(project):
    dry = _dry_run_jobs(run([BIN / "snakemake", "--profile", "profiles/local", "-n", "pvt_released", "--config",
                             "data_root=data"], cwd=project).stdout)
    planned = plan.plan(["pvt_released"], plan.load_config(["data_root=data"]), root=project)
    released = {o: j for o, j in dry.items()
                if j[0] in ("fetch_weights", "convert_released", "evaluate_released", "gather_released")}
    assert {r["output"]: r["rule"] for r in planned["jobs"]} == {o: j[0] for o, j in released.items()}
    assert not any(j[0] in ("pretrain", "finetune") for j in dry.values())
    assert {r["rule"] for r in planned["jobs"]} == {"fetch_weights", "convert_released", "evaluate_released",
                                                   "gather_released"}
    for r in planned["jobs"]:
        _, gpu, nodes, minutes = released[r["output"]]
        if r["rule"] == "evaluate_released":
            assert (r["gpus_per_node"], r["nodes"], r["hours"]) == (gpu, nodes, minutes / 60)
