"""A real single-node SLURM cluster (Debian's slurm-wlm + munge) on localhost, for tests.

``start_cluster`` installs the packages when missing (root + apt only), starts munged,
slurmctld and slurmd with a private slurm.conf, and waits for the node to be idle. Any
step that cannot be done here raises ``ClusterUnavailable`` with the reason, so the test
can skip cleanly; a cluster that starts is used for real.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.apt import apt_install

PACKAGES = ("slurm-wlm", "munge")


class ClusterUnavailable(RuntimeError):
    pass


@dataclass
class SlurmCluster:
    root: Path
    conf: Path
    env: dict[str, str]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def run(self, *cmd: str) -> str:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60, check=True).stdout

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _ensure_packages() -> None:
    if shutil.which("slurmctld") and shutil.which("munged"):
        return
    if reason := apt_install(list(PACKAGES)):
        raise ClusterUnavailable(reason)


def _start_munge(root: Path) -> subprocess.Popen[bytes]:
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(os.urandom(1024))
    shutil.chown(key, "munge", "munge")
    key.chmod(0o400)
    for d in ("/run/munge", "/var/lib/munge", "/var/log/munge"):
        Path(d).mkdir(parents=True, exist_ok=True)
        shutil.chown(d, "munge", "munge")
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode == 0:
        return subprocess.Popen(["sleep", "0"])
    proc = subprocess.Popen(["runuser", "-u", "munge", "--", "munged", "--foreground"], stderr=subprocess.DEVNULL)
    time.sleep(1)
    if proc.poll() is not None:
        raise ClusterUnavailable("munged exited at start")
    return proc


def _slurm_conf(root: Path, host: str, cpus: int, memory_mb: int) -> str:
    return f"""ClusterName=ssaetest
SlurmctldHost={host}(127.0.0.1)
AuthType=auth/munge
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/ctld.pid
SlurmdPidFile={root}/d.pid
SlurmctldLogFile={root}/log/ctld.log
SlurmdLogFile={root}/log/d.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=3600
SlurmctldParameters=enable_configless
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def start_cluster(root: Path, cpus: int | None = None, memory_mb: int = 8000) -> SlurmCluster:
    _ensure_packages()
    for sub in ("state", "spool", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, host, cpus or os.cpu_count() or 1, memory_mb))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = SlurmCluster(root, conf, env)
    try:
        cluster.processes.append(_start_munge(root))
        # slurmd runs "configless": it fetches slurm.conf from slurmctld and caches it under
        # /run/slurm/conf, where job steps find it (the SLURM jobstep executor strips
        # SLURM_CONF from the environment of its nested srun).
        daemons = [["slurmctld", "-D", "-f", str(conf)], ["slurmd", "-D", "--conf-server", "127.0.0.1:6817"]]
        for argv in daemons:
            daemon = argv[0]
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            cluster.processes.append(proc)
            time.sleep(1)
            if proc.poll() is not None:
                raise ClusterUnavailable(f"{daemon} exited at start: {_tail(root / 'log')}")
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                state = cluster.run("sinfo", "-h", "-o", "%t").strip()
            except subprocess.CalledProcessError:
                state = ""
            if state == "idle":
                return cluster
            time.sleep(1)
        raise ClusterUnavailable(f"node never became idle (state {state!r}): {_tail(root / 'log')}")
    except BaseException:
        cluster.stop()
        raise


def _tail(log_dir: Path) -> str:
    lines = []
    for log in sorted(log_dir.glob("*.log")):
        lines += [f"{log.name}: {line}" for line in log.read_text(errors="replace").splitlines()[-5:]]
    return " | ".join(lines)
