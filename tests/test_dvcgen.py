"""The DVC pipelines (`python -m pipeline.dvcgen`): current with the config, one owner per file, the two scales
apart; and the DVC commands a user types, for real on smoke tables: repro, metrics, params, plots, exp, commit of
a run made outside DVC, push and pull through a local and an SSH remote, and Snakemake finding nothing to do
after a pull."""

import csv
import pwd
import hashlib
import json
import os
import shutil
import socket
import subprocess
import time

import pytest
import yaml

from conftest import BIN, PYTHON, ROOT, copy_project, run
from pipeline import dvcgen, registry, released, targets

SMOKE = "smoke/dvc.yaml"
LVT = f"{SMOKE}:lvt_imagenet"  # one pretraining (LVT classifier) and its table
ATTNPOOL = f"{SMOKE}:patchconvnet_resnet50_attnpool"  # two pretrainings and their table
LVT_RUN = "results/pretrain/imagenet-embedded/lvt_cls/lvt/seed0"
SNAKEMAKE_SMOKE = [str(BIN / "snakemake"), "--profile", "profiles/local", "--config", "scale=smoke"]
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org"}
DVC = str(BIN / "dvc")


def _stages(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())["stages"]


def _files(stage: dict) -> list[str]:
    return stage.get("outs", []) + stage.get("metrics", [])


def test_pipeline_files_are_current():
    config = registry.load_yaml(registry.CONFIG_DIR / "config.yaml")
    for name, text in dvcgen.current(config).items():
        assert (ROOT / name).read_text() == text, f"{name} is stale: run python -m pipeline.dvcgen"


def test_every_table_has_a_stage_at_each_scale_and_every_file_one_owner():
    owners = {}
    for scale, name in dvcgen.FILES.items():
        stages = _stages(name)
        for target in [*targets.reproducible(), *released.targets()]:
            cmd = stages[target]["cmd"][-1]
            assert f"--profile {dvcgen.PROFILES[scale]} {target} --config scale={scale}" in cmd
        for stage_name, stage in stages.items():
            assert stage["cmd"][0] == dvcgen.CHECK
            for f in _files(stage):
                assert f not in owners, f"{f}: declared by {owners[f]} and {name}:{stage_name}"
                owners[f] = f"{name}:{stage_name}"
                assert "/state/" not in f  # resumable training state stays out of DVC
                # A smoke stage writes only smoke-scale files (embedded datasets, tables under smoke/) and a
                # full one never does.
                assert ("-embedded/" in f or "/smoke/" in f) == (scale == "smoke"), f
    # A backbone's ImageNet weights that two tables use are one stage both depend on.
    stages = _stages("dvc.yaml")
    pvt_small = "results/pretrain/imagenet/pvt_small/pvt/seed0/model.pth"
    assert owners[pvt_small] == "dvc.yaml:pretrain-imagenet-pvt_small-pvt-seed0"
    for table in ("pvt_table4", "pvt_table5"):
        assert pvt_small in stages[table]["deps"] and pvt_small not in _files(stages[table])
    # PVT Table 4 is Mask R-CNN on PVT and ResNet backbones (paper §5.2): the PVT pretraining and Mask R-CNN
    # recipes, and the supplied ResNet weights, are its params.
    assert stages["pvt_table4"]["params"] == [
        {"config/config.yaml": ["seeds", "pretrain_source", "pretrained_weights"]},
        {"config/recipes/pretrain.yaml": ["recipes.pvt"]}, {"config/recipes/finetune.yaml": ["recipes.pvt_mask_rcnn"]}]


def test_check_names_the_stale_file(tmp_path):
    project = copy_project(tmp_path / "project")
    config = yaml.safe_load((project / "config/config.yaml").read_text())
    config["seeds"] = [0, 1]
    (project / "config/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    proc = run([PYTHON, "-m", "pipeline.dvcgen", "--check"], cwd=project, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: dvc.yaml does not match config/ (the registry, recipes or config.yaml changed since it was "
        "generated); run `python -m pipeline.dvcgen` and commit it"]
    assert run([PYTHON, "-m", "pipeline.dvcgen"], cwd=project).returncode == 0
    assert run([PYTHON, "-m", "pipeline.dvcgen", "--check"], cwd=project).returncode == 0
    assert "seed1" in (project / "dvc.yaml").read_text()


# ---- DVC for real, at smoke scale ----


def _git(project, *args):
    return run(["git", *args], cwd=project, env=GIT_ENV)


def _dvc(project, *args, check=True):
    return run([DVC, *args], cwd=project, check=check, timeout=900)


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _clone(src, dst):
    run(["git", "clone", "-q", str(src), str(dst)], cwd=src.parent)
    (dst / ".venv").symlink_to(ROOT / ".venv")
    return dst


def _nothing_to_do(project) -> bool:
    proc = run([*SNAKEMAKE_SMOKE, "-n", "lvt_imagenet", "patchconvnet_resnet50_attnpool"], cwd=project)
    return "Nothing to be done" in proc.stdout + proc.stderr


def _touch(project):
    """What the README says to run after `dvc pull` or `dvc checkout`: the restored files recorded as up to date,
    in dependency order."""
    run([*SNAKEMAKE_SMOKE, "--touch", "lvt_imagenet", "patchconvnet_resnet50_attnpool"], cwd=project)


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory, embedded_data):
    """A git repository of the project on the embedded data: `dvc repro` of the LVT ImageNet table, and the
    PatchConvNet attention-pooling table run by Snakemake outside DVC and recorded with `dvc commit`."""
    project = copy_project(tmp_path_factory.mktemp("dvc") / "project")
    shutil.copy2(ROOT / ".gitignore", project / ".gitignore")
    (project / ".dvc").mkdir()
    shutil.copy2(ROOT / ".dvc" / "config", project / ".dvc" / "config")
    config = yaml.safe_load((project / "config/config.yaml").read_text())
    config["data_root"] = str(embedded_data)
    (project / "config/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    _git(project, "init", "-q")
    _git(project, "add", "-A")
    _git(project, "commit", "-qm", "project")

    _dvc(project, "repro", LVT)
    run([*SNAKEMAKE_SMOKE[:-2], "patchconvnet_resnet50_attnpool", *SNAKEMAKE_SMOKE[-2:]], cwd=project)
    _dvc(project, "commit", "-f", ATTNPOOL)
    _git(project, "add", "-A")
    _git(project, "commit", "-qm", "smoke tables")
    return project


def test_repro_records_the_runs_and_a_second_repro_does_nothing(reproduced):
    lock = yaml.safe_load((reproduced / "smoke/dvc.lock").read_text())["stages"]
    assert set(lock) == {"lvt_imagenet", "patchconvnet_resnet50_attnpool"}
    outs = {o["path"]: o for o in lock["lvt_imagenet"]["outs"]}
    assert len(outs[f"{LVT_RUN}/model.pth"]["md5"]) == 32
    assert f"{LVT_RUN}/state" not in outs
    # The run made outside DVC and committed is as current as the reproduced one.
    assert json.loads(_dvc(reproduced, "status", "--json", LVT, ATTNPOOL).stdout) == {}
    again = _dvc(reproduced, "repro", LVT, ATTNPOOL).stdout
    assert "Running stage" not in again and again.count("didn't change, skipping") == 2


def test_metrics_show_lists_the_tables_and_runs(reproduced):
    shown = json.loads(_dvc(reproduced, "metrics", "show", "--json").stdout)[""]["data"]
    table = shown["results/tables/smoke/lvt_imagenet.metrics.json"]["data"]
    run_metrics = json.loads((reproduced / LVT_RUN / "metrics.json").read_text())
    assert table == {"lvt_lvt_cls": {"top1": run_metrics["top1"]}}
    assert shown[f"{LVT_RUN}/metrics.json"]["data"]["final_loss"] == run_metrics["final_loss"]
    attnpool = shown["results/tables/smoke/patchconvnet_resnet50_attnpool.metrics.json"]["data"]
    # One row: ResNet-50 with attention pooling, and its delta to the average-pooling baseline run beside it.
    assert set(attnpool["resnet_50_attention_pooling"]) == {"top1", "top1_delta_vs_avgpool"}


def test_plots_show_writes_the_curves(reproduced, tmp_path):
    _dvc(reproduced, "plots", "show", "-o", str(tmp_path / "plots"))
    page = (tmp_path / "plots" / "index.html").read_text()
    with open(reproduced / LVT_RUN / "curve_train.csv") as f:
        losses = [row["loss"] for row in csv.DictReader(f)]
    assert losses and all(loss in page for loss in losses)
    for plot in ("lvt_imagenet-pretrain-loss", "lvt_imagenet-pretrain-lr", "lvt_imagenet-pretrain-top1"):
        assert plot in page


def test_a_recipe_change_as_an_experiment_reruns_exactly_its_stage_and_the_diffs_show_it(reproduced):
    before = json.loads((reproduced / LVT_RUN / "metrics.json").read_text())
    warmup = "recipes.lvt.fields.warmup_lr.value"
    assert yaml.safe_load((reproduced / "config/recipes/pretrain.yaml").read_text())["recipes"]["lvt"]["fields"][
        "warmup_lr"]["value"] == 1.0e-6
    # The warm-up lr is the first step's: a larger one changes the second step's loss. One value set on the
    # command line (as `--config` would for Snakemake, but recorded by DVC as an experiment).
    out = _dvc(reproduced, "exp", "run", "-n", "warm", "-S", f"config/recipes/pretrain.yaml:{warmup}=0.001",
               LVT, ATTNPOOL).stdout
    assert f"Running stage '{LVT}'" in out and f"Stage '{ATTNPOOL}' didn't change, skipping" in out
    assert json.loads(_dvc(reproduced, "status", "--json", LVT, ATTNPOOL).stdout) == {}

    shown = json.loads(_dvc(reproduced, "exp", "show", "--json").stdout)
    exp = next(e for rev in shown for e in (rev.get("experiments") or []) if e["name"] == "warm")["revs"][0]["data"]
    assert exp["params"]["config/recipes/pretrain.yaml"]["data"]["recipes"]["lvt"]["fields"]["warmup_lr"][
        "value"] == 0.001
    after = json.loads((reproduced / LVT_RUN / "metrics.json").read_text())
    assert exp["metrics"][f"{LVT_RUN}/metrics.json"]["data"]["final_loss"] == after["final_loss"]

    _git(reproduced, "commit", "-qam", "lvt warm-up lr")
    params = json.loads(_dvc(reproduced, "params", "diff", "HEAD~1", "--json").stdout)
    changed = params["config/recipes/pretrain.yaml"][warmup]
    assert (changed["old"], changed["new"]) == (1e-6, 1e-3)
    diff = json.loads(_dvc(reproduced, "metrics", "diff", "HEAD~1", "--json").stdout)
    loss = diff[f"{LVT_RUN}/metrics.json"]["final_loss"]
    assert loss["old"] == before["final_loss"] and loss["new"] == after["final_loss"] != before["final_loss"]


def test_push_and_a_colleagues_pull_leave_snakemake_nothing_to_do(reproduced, tmp_path):
    store = tmp_path / "store"
    _dvc(reproduced, "remote", "add", "--local", "-d", "store", str(store))
    _dvc(reproduced, "push")
    colleague = _clone(reproduced, tmp_path / "colleague")
    _dvc(colleague, "remote", "add", "--local", "-d", "store", str(store))
    # Everything that was run (stages never run have nothing to pull).
    _dvc(colleague, "pull", "--allow-missing")
    for f in (f"{LVT_RUN}/model.pth", "reports/smoke/lvt_imagenet.html",
              "results/tables/smoke/patchconvnet_resnet50_attnpool.json"):
        assert _sha256(colleague / f) == _sha256(reproduced / f), f
    assert json.loads(_dvc(colleague, "status", "--json", LVT, ATTNPOOL).stdout) == {}
    # Pulled files have new times in no order: Snakemake would re-make them. Touched in order, nothing is left.
    _touch(colleague)
    assert _nothing_to_do(colleague)
    # The same after `dvc checkout` restores deleted results in the colleague's workspace.
    shutil.rmtree(colleague / "results")
    shutil.rmtree(colleague / "reports" / "smoke")
    _dvc(colleague, "checkout", LVT, ATTNPOOL)
    _touch(colleague)
    assert (colleague / LVT_RUN / "model.pth").exists() and _nothing_to_do(colleague)
    # A recipe change in the colleague's clone makes exactly the LVT stage stale for `dvc repro`.
    recipes = colleague / "config/recipes/pretrain.yaml"
    doc = yaml.safe_load(recipes.read_text())
    doc["recipes"]["lvt"]["fields"]["warmup_lr"]["value"] = 1.0e-4
    recipes.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert set(json.loads(_dvc(colleague, "status", "--json", LVT, ATTNPOOL).stdout)) == {LVT}


@pytest.fixture
def sshd(tmp_path):
    """(url user@127.0.0.1:port, private key): an OpenSSH server started for the test, as a cluster's storage
    node would be; installed with apt when missing (needs root)."""
    binary = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(binary):
        if os.geteuid() != 0:
            pytest.skip("OpenSSH's sshd is not installed and installing it needs root: apt-get install "
                        "openssh-server")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True, env=env, timeout=900)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "openssh-server"],
                       check=True, capture_output=True, env=env, timeout=1200)
    keys = tmp_path / "ssh"
    keys.mkdir()
    for name in ("host", "user"):
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)])
    shutil.copy2(keys / "user.pub", keys / "authorized_keys")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (keys / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keys / 'host'}\n"
        f"AuthorizedKeysFile {keys / 'authorized_keys'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        f"StrictModes no\nUsePAM no\nPidFile {keys / 'sshd.pid'}\nSubsystem sftp internal-sftp\n")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation directory
    server = subprocess.Popen([binary, "-D", "-e", "-f", str(keys / "sshd_config")], stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield f"{pwd.getpwuid(os.getuid()).pw_name}@127.0.0.1:{port}", keys / "user"  # the account, not $USER
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_push_to_an_ssh_remote_and_pull_into_a_fresh_clone(reproduced, sshd, tmp_path):
    host, key = sshd
    url = f"ssh://{host}{tmp_path / 'cluster store'}"
    _dvc(reproduced, "remote", "add", "--local", "cluster", url)
    _dvc(reproduced, "remote", "modify", "--local", "cluster", "keyfile", str(key))
    _dvc(reproduced, "push", "-r", "cluster", LVT)
    assert any((tmp_path / "cluster store").rglob("*"))
    clone = _clone(reproduced, tmp_path / "clone")
    _dvc(clone, "remote", "add", "--local", "cluster", url)
    _dvc(clone, "remote", "modify", "--local", "cluster", "keyfile", str(key))
    _dvc(clone, "pull", "-r", "cluster", LVT)
    assert _sha256(clone / LVT_RUN / "model.pth") == _sha256(reproduced / LVT_RUN / "model.pth")
    assert _sha256(clone / "results/tables/smoke/lvt_imagenet.json") == \
        _sha256(reproduced / "results/tables/smoke/lvt_imagenet.json")
