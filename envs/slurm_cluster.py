#!/usr/bin/env python3
"""A single-node SLURM cluster on this machine, for the integration tests and for trying the slurm profile.

    python envs/slurm_cluster.py start [--state-dir DIR]   install what is missing (Debian, as root), start
                                                            the daemons, print `export SLURM_CONF=...`
    python envs/slurm_cluster.py stop  [--state-dir DIR]   stop the daemons this script started, nothing else
    python envs/slurm_cluster.py status [--state-dir DIR]

One node named after this host with its CPUs, 2 fake GPUs (gres backed by /dev/null) and the accounting
daemons (slurmdbd + MariaDB) that `sacct` needs. The configuration lives in the state directory (default
.cache/slurm), not in /etc: clients find it through SLURM_CONF. Timings are tuned for tests: credentials
expire after 10 s, so a requeued job starts again after about 11 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ["slurm-wlm", "slurmdbd", "munge", "mariadb-server"]
DAEMONS = {"munged": "munge", "mariadbd": "mariadb-server", "slurmdbd": "slurmdbd", "slurmctld": "slurm-wlm",
           "slurmd": "slurm-wlm"}
FAKE_GPUS = 2
DB_USER, DB_PASS = "slurm", "slurm"
DEFAULT_STATE = Path(__file__).resolve().parent.parent / ".cache" / "slurm"


class ClusterError(Exception):
    pass


def _run(cmd, check=True, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise ClusterError(f"{' '.join(map(str, cmd))} exited {proc.returncode}: "
                           f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:] or ''}")
    return proc


def _running(name: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "comm").read_text().strip() == name:
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def _conf_of(pid: int) -> str | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((v.split(b"=", 1)[1].decode() for v in env if v.startswith(b"SLURM_CONF=")), None)


def _wait(what: str, ok, timeout: float = 60.0, log: Path | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ok():
            return
        time.sleep(0.5)
    tail = f"; last log lines: {log.read_text().strip().splitlines()[-3:]}" if log and log.exists() else ""
    raise ClusterError(f"{what} did not come up within {timeout:.0f} s{tail}")


def install() -> None:
    missing = sorted({pkg for daemon, pkg in DAEMONS.items() if not shutil.which(daemon, path="/usr/sbin:/usr/bin")})
    if not missing:
        return
    if os.geteuid() != 0:
        raise ClusterError(f"missing Debian packages {', '.join(missing)}: install them as root "
                           f"(apt-get install {' '.join(PACKAGES)}) or run this script as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES], check=False, env=env).returncode:
        _run(["apt-get", "update", "-q"], env=env)
        _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES], env=env)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def cluster_name(state: Path) -> str:
    """One accounting cluster per state directory: job ids restart at 1 with a fresh state directory, and the
    accounting database (shared, in MariaDB) must not answer for an earlier cluster's job of the same id."""
    path = state / "cluster_name"
    if not path.exists():
        path.write_text(f"repro{os.getpid() % 1000:03d}{int(time.time()) % 100000:05d}")
    return path.read_text().strip()


def configure(state: Path) -> Path:
    host = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    etc = state / "etc"
    for d in ("ctld", "spool", "log", "run", "dev"):
        (state / d).mkdir(parents=True, exist_ok=True)
    for i in range(FAKE_GPUS):
        dev = state / "dev" / f"nvidia{i}"
        if not dev.is_symlink():
            dev.symlink_to("/dev/null")  # a character device: slurmd sets CUDA_VISIBLE_DEVICES for it
    _write(etc / "slurm.conf", f"""\
# Single-node test cluster (envs/slurm_cluster.py).
ClusterName={cluster_name(state)}
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/spool
SlurmctldPidFile={state}/run/slurmctld.pid
SlurmdPidFile={state}/run/slurmd.pid
SlurmctldLogFile={state}/log/slurmctld.log
SlurmdLogFile={state}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU={max(256, mem_mb // (4 * cpus))}
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=300
MessageTimeout=10
SchedulerType=sched/backfill
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/none
NodeName={host} CPUs={cpus} RealMemory={mem_mb * 3 // 4} Gres=gpu:{FAKE_GPUS} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
    _write(etc / "gres.conf", f"AutoDetect=off\nName=gpu File={state}/dev/nvidia[0-{FAKE_GPUS - 1}]\n")
    _write(etc / "slurmdbd.conf", f"""\
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile={state}/run/slurmdbd.pid
LogFile={state}/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser={DB_USER}
StoragePass={DB_PASS}
StorageLoc=slurm_acct_db
""", mode=0o600)
    return etc / "slurm.conf"


def _spawn(cmd, log: Path, user: str | None = None, env=None) -> int:
    if user:
        cmd = ["runuser", "-u", user, "--", *cmd]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    return proc.pid


def start(state: Path) -> dict:
    install()
    conf = configure(state)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started = _load(state)
    log = state / "log"

    def launch(name, cmd, ready, user=None):
        if pids := _running(name):
            if name in ("slurmctld", "slurmd") and set(pids) - set(started.get(name) or []):
                # munged, MariaDB and slurmdbd serve any cluster; a controller belongs to its own.
                other = _conf_of(pids[0])
                raise ClusterError(f"{name} (pid {pids[0]}) already runs another cluster (SLURM_CONF={other}); "
                                   f"stop it first: envs/slurm_cluster.py stop --state-dir "
                                   f"{Path(other).parent.parent if other else '<its state dir>'}")
            return
        _spawn(cmd, log / f"{name}.out", user, env)
        _wait(name, ready, log=log / f"{name}.out")
        started[name] = _running(name)
        _save(state, started)

    Path("/run/munge").mkdir(exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    launch("munged", ["/usr/sbin/munged", "--foreground"], lambda: Path("/run/munge/munge.socket.2").exists(),
           user="munge")
    Path("/run/mysqld").mkdir(exist_ok=True)
    shutil.chown("/run/mysqld", "mysql", "mysql")
    launch("mariadbd", ["/usr/sbin/mariadbd", "--user=mysql", "--skip-networking=0", "--bind-address=127.0.0.1"],
           lambda: Path("/run/mysqld/mysqld.sock").exists())
    _wait("MariaDB", lambda: _run(["mariadb", "-e", "SELECT 1"], check=False).returncode == 0)
    _run(["mariadb", "-e", f"CREATE USER IF NOT EXISTS '{DB_USER}'@'localhost' IDENTIFIED BY '{DB_PASS}'; "
                           f"GRANT ALL ON slurm_acct_db.* TO '{DB_USER}'@'localhost'; FLUSH PRIVILEGES;"])
    sacctmgr_ok = lambda: _run(["sacctmgr", "-n", "show", "cluster"], check=False, env=env).returncode == 0  # noqa: E731
    launch("slurmdbd", ["/usr/sbin/slurmdbd", "-D"], sacctmgr_ok)
    cluster = cluster_name(state)
    if cluster not in _run(["sacctmgr", "-n", "-P", "show", "cluster", "format=cluster"], env=env).stdout.split():
        _run(["sacctmgr", "-i", "add", "cluster", cluster], env=env)
    launch("slurmctld", ["/usr/sbin/slurmctld", "-D"],
           lambda: _run(["scontrol", "ping"], check=False, env=env).stdout.count("UP") > 0)
    launch("slurmd", ["/usr/sbin/slurmd", "-D"],
           lambda: _run(["sinfo", "-h", "-o", "%T"], check=False, env=env).stdout.strip() in ("idle", "mixed"))
    return {"SLURM_CONF": str(conf), "started": started}


def _load(state: Path) -> dict:
    path = state / "started.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _save(state: Path, started: dict) -> None:
    tmp = state / "started.json.tmp"
    tmp.write_text(json.dumps(started, indent=1))
    tmp.replace(state / "started.json")


def stop(state: Path) -> list[str]:
    """Stop, in reverse start order, the daemons `start` started (by pid, checking each is still that daemon)."""
    started = _load(state)
    stopped = []
    for name in reversed(list(started)):
        pids = [p for p in started[name] if p in _running(name)]
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        deadline = time.time() + 20
        while any(p in _running(name) for p in pids) and time.time() < deadline:
            time.sleep(0.2)
        for pid in pids:
            if pid in _running(name):
                os.kill(pid, signal.SIGKILL)
        stopped.append(name)
        del started[name]
        _save(state, started)
    return stopped


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE)
    args = parser.parse_args(argv)
    state = args.state_dir.resolve()
    try:
        if args.command == "start":
            state.mkdir(parents=True, exist_ok=True)
            info = start(state)
            print(f"export SLURM_CONF={info['SLURM_CONF']}")
            print(f"# started: {', '.join(info['started']) or 'nothing (all were running)'}", file=sys.stderr)
        elif args.command == "stop":
            print(f"stopped: {', '.join(stop(state)) or 'nothing'}")
        else:
            print(json.dumps({name: _running(name) for name in DAEMONS}))
    except ClusterError as e:
        print(f"slurm_cluster: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
