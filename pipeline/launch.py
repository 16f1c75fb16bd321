"""Run one training or evaluation command here, or on SLURM through submitit; Snakemake's GPU rules call this.

    python -m pipeline.launch --run-dir DIR --gpus G --nodes N --minutes M [--output F ...] -- ENGINE ARGS...

`ENGINE ARGS` is the engine's own command (`python -m pipeline.pretrain ...`). The executor comes from the
config's `cluster:` section (config/config.yaml, overridden by profiles/slurm/cluster.yaml under
`--profile profiles/slurm`), which the rules pass as JSON:

- local: the command runs here, as a child process; with G > 1 GPUs, one process per GPU under torchrun.
- slurm: one submitit job with N nodes x G tasks (one per GPU, at least one), each task running the command
  with RANK/WORLD_SIZE/MASTER_ADDR set from the job (torch.distributed's env:// set-up). With
  `--tasks-per-node 1` the engine starts its own per-GPU processes (fine-tuning, through detectron2's launch)
  and reads its node's place from NNODES/NODE_RANK/MASTER_ADDR/MASTER_PORT. SLURM signals USR2
  `signal_delay_s` before the time limit, and `scancel --signal=USR2` does the same for a preemption: the
  engine saves its state and exits with REQUEUE_EXIT (pipeline/preempt.py), and the job requeues itself with
  the same job id, at most `max_timeouts` times for time limits. The job id is kept in DIR/slurm/job.json; when
  Snakemake is restarted while the job is pending or running, this attaches to it instead of submitting again.
  While waiting it prints the job's state changes and new log lines; a failed job ends this command with its
  log tail and one error line. The engine writes the declared outputs itself, atomically, when it completes;
  this command checks they are there.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline import registry
from pipeline.io import atomic_write_json
from pipeline.preempt import REQUEUE_EXIT

ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED", "REQUEUE_HOLD",
          "REQUEUE_FED", "UNKNOWN"}


class LaunchError(Exception):
    pass


class EngineTask:
    """What each SLURM task runs: the engine command as a child process, with the task's distributed rank.
    On SLURM's USR2 submitit calls `checkpoint`: the child (signalled too) saves and exits, then the job is
    requeued with this same task. `threads`: CPU threads for each GPU process."""

    def __init__(self, command: list[str], cwd: str, stop_wait_s: float, threads: int, outputs: list[str],
                 kept: str):
        self.command, self.cwd, self.stop_wait_s, self.threads = command, cwd, stop_wait_s, threads
        self.outputs, self.kept = outputs, kept
        self.child: subprocess.Popen | None = None

    def __call__(self) -> int:
        import submitit

        # CPU threads per GPU process (torch's default, all cores, oversubscribes a node shared by processes).
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
        job = submitit.JobEnvironment()
        if job.num_tasks > 1:
            dist = submitit.helpers.TorchDistributedEnvironment()
            env.update(MASTER_ADDR=dist.master_addr, MASTER_PORT=str(dist.master_port), RANK=str(dist.rank),
                       WORLD_SIZE=str(dist.world_size), LOCAL_RANK=str(dist.local_rank),
                       LOCAL_WORLD_SIZE=str(dist.local_world_size), NODE_RANK=str(job.node),
                       NNODES=str(job.num_nodes))
        # The engine ignores USR2 until it installs its own handler (a signal during start-up is resent). It
        # leads its own process group, so that `checkpoint` reaches the processes it starts too.
        self.child = subprocess.Popen(self.command, cwd=self.cwd, env=env, start_new_session=True,
                                      preexec_fn=lambda: signal.signal(signal.SIGUSR2, signal.SIG_IGN))
        # Polled, not wait()ed: submitit's USR2 handler runs in this thread and must be able to reap the child.
        while (code := self.child.poll()) is None:
            time.sleep(0.5)
        if code == REQUEUE_EXIT:
            # The stop signal reached the engine; submitit's handler is requeuing this job (rank 0) or this
            # task just ends with it.
            time.sleep(60)
        if code:
            raise LaunchError(f"{' '.join(self.command[:3])} ... exited {code} in job {job.job_id}")
        if job.global_rank == 0:
            keep_outputs(self.outputs, Path(self.kept))
        return code

    def checkpoint(self):
        import submitit

        # Ask the engine to save and stop (again each second, in case it was still starting), until the time
        # left before SLURM's kill runs short; then it resumes from its last periodic checkpoint.
        deadline = time.time() + self.stop_wait_s
        while self.child is not None and self.child.poll() is None and time.time() < deadline:
            self._signal(signal.SIGUSR2)
            time.sleep(1)
        if self.child is not None and self.child.poll() is None:
            self._signal(signal.SIGKILL)
            while self.child.poll() is None:
                time.sleep(0.2)
        return submitit.helpers.DelayedSubmission(EngineTask(self.command, self.cwd, self.stop_wait_s, self.threads,
                                                             self.outputs, self.kept))

    def _signal(self, signum: int) -> None:
        try:
            os.killpg(self.child.pid, signum)
        except ProcessLookupError:
            pass


def keep_outputs(outputs: list[str], kept: Path) -> None:
    """Hard links (no extra space) to a completed job's outputs, from which a restarted Snakemake that removed
    them as incomplete gets them back without running the job again."""
    kept.mkdir(parents=True, exist_ok=True)
    for i, output in enumerate(outputs):
        link = kept / f"{i}-{Path(output).name}"
        link.unlink(missing_ok=True)
        _link_or_copy(Path(output), link)


def restore_outputs(outputs: list[str], kept: Path) -> bool:
    """Put back the outputs `keep_outputs` kept; False when one is not there."""
    links = [kept / f"{i}-{Path(output).name}" for i, output in enumerate(outputs)]
    if not all(link.is_file() for link in links):
        return False
    for link, output in zip(links, outputs):
        if not Path(output).exists():
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(link, Path(output))
    return True


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


PROGRESS = re.compile(r"\d+%\||\d(it|s)/(s|it)\]|^\s*$")


def engine_tail(path: Path, lines: int = 15) -> str:
    """The last lines the engine wrote in a job's log: progress-bar frames and submitit's traceback left out."""
    if not path.exists():
        return ""
    kept, in_traceback = [], False
    for line in re.split(r"[\r\n]+", path.read_text(errors="replace")):
        if line.startswith("Traceback (most recent call last)"):
            in_traceback = True
        elif in_traceback and not line.startswith((" ", "\t")):
            in_traceback = False  # the exception's own line ends the traceback
        elif not in_traceback and not PROGRESS.search(line) and not line.startswith("submitit "):
            kept.append(line)
    return "\n".join(kept[-lines:])


def _state(job) -> str:
    """The job's SLURM state now (sacct, not submitit's cached view; squeue while sacct does not know it yet):
    RUNNING, COMPLETED, "CANCELLED by 0" -> CANCELLED, ..."""
    state = (job.get_info(mode="force").get("State") or "UNKNOWN").split()[0]
    if state == "UNKNOWN":
        queued = subprocess.run(["squeue", "-h", "-j", str(job.job_id), "-o", "%T"], capture_output=True, text=True)
        if queued.returncode == 0 and queued.stdout.strip():
            state = queued.stdout.strip()
    return state


def run_local(command: list[str], tasks: int) -> int:
    if tasks > 1:
        module = command.index("-m")
        command = [*command[:module], "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={tasks}",
                   *command[module:]]
    return subprocess.run(command).returncode


def job_name(run_dir: Path, name: str) -> str:
    """The SLURM job name: `name` and a key of the run folder, by which a restart finds the job whose record was
    never written (Snakemake killed between the submission and the record)."""
    return f"{name}.{hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:10]}"


def _inputs(command: list[str], outputs: list[str]) -> str:
    """What the command runs on: its arguments, and the size and modification time of each file it names (less
    its outputs and log); a completed job is reused only for the same."""
    files = {}
    for i, arg in enumerate(command):
        if arg not in outputs and command[i - 1:i] != ["--log-file"] and os.path.isfile(arg):
            stat = os.stat(arg)
            files[arg] = [stat.st_size, stat.st_mtime_ns]
    return hashlib.sha256(json.dumps([command, files], sort_keys=True).encode()).hexdigest()


class SlurmRun:
    """One run's SLURM job: submitted once, found again after any restart (by its record, or by its name when
    the record is missing), and, once completed, not submitted again for the same inputs."""

    def __init__(self, run_dir: Path, settings: dict, name: str, command: list[str], outputs: list[str]):
        import submitit

        self.folder = run_dir / "slurm"
        self.record = self.folder / "job.json"
        self.kept = self.folder / "outputs"
        self.settings, self.command, self.outputs = settings, command, outputs
        self.name = job_name(run_dir, name)
        self.inputs = _inputs(command, outputs)
        self.submitit = submitit

    def _job(self, job_id: str):
        return self.submitit.SlurmJob(self.folder, job_id)

    def find(self):
        """(job, how) for a job of this run that is pending or running ("attaching to") or completed for the same
        inputs ("reusing completed"), else (None, None)."""
        if self.record.exists():
            record = json.loads(self.record.read_text())
            job = self._job(record["job_id"])
            state = _state(job)
            if state in ACTIVE and state != "UNKNOWN":
                return job, "attaching to"
            if state == "COMPLETED" and record.get("inputs") == self.inputs and restore_outputs(self.outputs,
                                                                                               self.kept):
                return job, "reusing completed"
        queued = subprocess.run(["squeue", "-h", "--name", self.name, "-o", "%i"], capture_output=True, text=True)
        ids = queued.stdout.split() if queued.returncode == 0 else []
        if ids:
            job = self._job(ids[-1])
            self._write_record(job.job_id)
            return job, "attaching to"
        return None, None

    def submit(self, gpus: int, nodes: int, tasks: int, minutes: int):
        s = self.settings
        executor = self.submitit.AutoExecutor(folder=self.folder, cluster="slurm",
                                              slurm_max_num_timeout=int(s["max_timeouts"]))
        # CPUs and memory are per GPU process: a task each (DDP), or all in the one task that starts them.
        processes = max(gpus, tasks)
        params = dict(name=self.name, nodes=nodes, tasks_per_node=tasks, gpus_per_node=gpus, timeout_min=minutes,
                      cpus_per_task=int(s["cpus_per_gpu"]) * processes // tasks,
                      mem_gb=int(s["mem_gb_per_gpu"]) * processes, slurm_signal_delay_s=int(s["signal_delay_s"]))
        for key in ("partition", "account", "qos"):
            if s.get(key):
                params[f"slurm_{key}"] = s[key]
        executor.update_parameters(**params)
        stop_wait = max(params["slurm_signal_delay_s"] - 15, 5)
        shutil.rmtree(self.kept, ignore_errors=True)
        task = EngineTask(self.command, os.getcwd(), stop_wait, int(s["cpus_per_gpu"]),
                          [os.path.abspath(o) for o in self.outputs], os.path.abspath(self.kept))
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's error before raising it
                job = executor.submit(task)
        except self.submitit.core.utils.FailedJobError as e:
            said = (str(e).strip().splitlines() or ["no reason given"])[-1]
            raise LaunchError(f"SLURM refused the job ({said}); it asks {nodes} node(s) with {gpus} GPU(s), "
                              f"{params['cpus_per_task'] * tasks} CPUs and {params['mem_gb']} GB each: lower "
                              "cluster.cpus_per_gpu or cluster.mem_gb_per_gpu, or set cluster.partition, in "
                              "profiles/slurm/cluster.yaml") from None
        self._write_record(job.job_id)
        return job

    def _write_record(self, job_id: str) -> None:
        atomic_write_json(self.record, {"job_id": job_id, "name": self.name, "command": self.command,
                                        "inputs": self.inputs, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def wait(self, job, poll_s: float, unknown_s: float = 300) -> None:
        last_state, shown = None, 0
        start = known = time.time()
        while True:
            state = _state(job)
            if state != "UNKNOWN":
                known = time.time()
            elif time.time() - known > unknown_s:
                raise LaunchError(f"neither sacct nor squeue has known slurm job {job.job_id} for {unknown_s:.0f} s "
                                  f"(SLURM_CONF={os.environ.get('SLURM_CONF', 'default')}; sacct needs the cluster's "
                                  "accounting); check it with `scontrol show job` before running again")
            shown_state = f"{state} ({_reason(job.job_id)})" if state == "PENDING" else state
            if shown_state != last_state:
                print(f"launch: slurm job {job.job_id} {shown_state} ({time.time() - start:.0f} s)", file=sys.stderr,
                      flush=True)
                last_state = shown_state
            log = Path(job.paths.stdout)
            if log.exists():
                lines = log.read_text(errors="replace").splitlines()
                for line in lines[shown:]:
                    print(f"  [{job.job_id}] {line}", file=sys.stderr)
                shown = len(lines)
            if state not in ACTIVE:
                break
            time.sleep(poll_s)
        if state != "COMPLETED":
            tail = engine_tail(Path(job.paths.stderr))
            raise LaunchError(f"slurm job {job.job_id} ended {state}; its log: {job.paths.stderr}"
                              + (f"; the engine's last lines:\n{tail}" if tail else ""))


ACCOUNTING = ("JobID", "State", "ElapsedRaw", "AllocTRES", "NodeList", "Start", "End")


def write_accounting(job_id: str, out: Path) -> None:
    """What SLURM's accounting says the job used (each requeue included): the report's GPU-hours under SLURM."""
    shown = subprocess.run(["sacct", "-n", "-X", "-P", "-D", "-j", str(job_id), "-o", ",".join(ACCOUNTING)],
                           capture_output=True, text=True)
    rows = [dict(zip(ACCOUNTING, line.split("|"))) for line in shown.stdout.splitlines() if line.strip()]
    if shown.returncode == 0 and rows:
        atomic_write_json(out, {"job_id": str(job_id), "sacct": rows})


def _reason(job_id: str) -> str:
    """Why a pending job waits (squeue's reason: Resources, Priority, PartitionConfig, BeginTime, ...)."""
    queued = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%r"], capture_output=True, text=True)
    return queued.stdout.strip() or "reason unknown"


def cluster_settings(given: str) -> dict:
    """The `cluster:` section the rules pass (JSON) on top of config/config.yaml's, the one place with defaults."""
    return {**registry.load_yaml(registry.CONFIG_DIR / "config.yaml")["cluster"], **json.loads(given)}


def launch(args) -> int:
    settings = cluster_settings(args.cluster)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise LaunchError("no command to run after --")
    executor = settings["executor"]
    # One task per GPU (DDP) unless the engine starts its own workers; at least one.
    tasks = max(args.gpus if args.tasks_per_node is None else args.tasks_per_node, 1)
    if executor == "local":
        code = run_local(command, tasks)
        if code:
            return code
    elif executor == "slurm":
        run = SlurmRun(Path(args.run_dir), settings, args.name or Path(args.run_dir).name, command, args.output)
        run.folder.mkdir(parents=True, exist_ok=True)
        job, how = run.find()
        if job is None:
            job, how = run.submit(args.gpus, args.nodes, tasks, args.minutes), "submitted"
        print(f"launch: {how} slurm job {job.job_id} ({run.record})", file=sys.stderr, flush=True)
        if how != "reusing completed":
            run.wait(job, float(settings["poll_s"]))
        write_accounting(job.job_id, run.folder / "accounting.json")
    else:
        raise LaunchError(f"config field 'cluster.executor' is {executor!r}; valid: local, slurm")
    missing = [o for o in args.output if not Path(o).exists()]
    if missing:
        raise LaunchError(f"the job completed but did not write {', '.join(missing)}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True, help="the job's result folder (slurm/ job records go there)")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs per node")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--tasks-per-node", type=int,
                        help="processes per node (default: one per GPU); 1 for engines that start their own")
    parser.add_argument("--minutes", type=int, default=60, help="wall-time limit")
    parser.add_argument("--name", help="job name")
    parser.add_argument("--output", action="append", default=[], help="a file the command must have written")
    parser.add_argument("--cluster", default="{}",
                        help="the config's `cluster:` section as JSON (the rules pass Snakemake's merged config); "
                             "what it leaves out comes from config/config.yaml")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- ENGINE ARGS...")
    args = parser.parse_args(argv)
    try:
        return launch(args)
    except LaunchError as e:
        print(f"launch: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
