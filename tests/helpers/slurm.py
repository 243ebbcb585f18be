"""A real single-node SLURM cluster for the tests: munged, slurmctld and slurmd started for this machine from
Debian's packages (`slurmctld slurmd slurm-client munge`), every file they write under one folder, and
accounting off (no slurmdbd: `sacct` fails, as on many small clusters). `.ci/run` installs the packages;
where they are missing or the daemons cannot start, `Cluster.start` says why and the test skips."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes() -> dict[int, str]:
    out = subprocess.run(["ps", "-eo", "pid=,comm="], capture_output=True, text=True).stdout
    return {int(pid): comm for pid, _, comm in (line.strip().partition(" ") for line in out.splitlines())}


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _descendants(roots: set[int]) -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout
    parent = {int(a): int(b) for a, b in (line.split() for line in out.splitlines())}
    found, grew = set(roots), True
    while grew:
        more = {pid for pid, ppid in parent.items() if ppid in found} - found
        found, grew = found | more, bool(more)
    return found


def _memory_mb() -> int:
    with open("/proc/meminfo") as f:
        kb = int(f.readline().split()[1])
    return kb // 1024 - 512  # what slurmd reports less a margin: a node claiming more than it has is drained


class Cluster:
    """`with Cluster(folder) as cluster:` the environment (SLURM_CONF) that sbatch, squeue and submitit use."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.procs: list[subprocess.Popen] = []
        self.env: dict[str, str] = {}

    def why_not(self) -> str | None:
        missing = [d for d in DAEMONS if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]
        if missing:
            return f"SLURM is not installed ({', '.join(missing)} missing; apt install slurmctld slurmd slurm-client munge)"
        if os.geteuid() != 0:
            return "the SLURM daemons of this test run as root"
        return None

    def _daemon(self, *command: str, log: str) -> None:
        out = open(self.folder / log, "ab")
        self.procs.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
                                           start_new_session=True))

    def start(self) -> None:
        f = self.folder
        for sub in ("munge", "state", "spool"):
            (f / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(f / "munge", 0o700)
        key = f / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        sock = f / "munge" / "munge.socket"
        host = socket.gethostname().split(".")[0]
        cpus = os.cpu_count() or 1
        (f / "slurm.conf").write_text("\n".join([
            "ClusterName=ganexp-test", f"SlurmctldHost={host}", "SlurmUser=root", "SlurmdUser=root",
            f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={sock}",
            f"StateSaveLocation={f / 'state'}", f"SlurmdSpoolDir={f / 'spool'}",
            f"SlurmctldPidFile={f / 'slurmctld.pid'}", f"SlurmdPidFile={f / 'slurmd.pid'}",
            f"SlurmctldLogFile={f / 'slurmctld.log'}", f"SlurmdLogFile={f / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU_Memory", "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", "SchedulerType=sched/builtin",
            "ReturnToService=2", "KillWait=10", "SchedulerParameters=sched_interval=2", "MinJobAge=300", "InactiveLimit=0", "SlurmctldDebug=info",
            "SlurmdDebug=info", "MpiDefault=none", "JobRequeue=1",
            f"NodeName={host} CPUs={cpus} RealMemory={_memory_mb()} State=UNKNOWN",
            f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES",
        ]) + "\n")
        self.env = {"SLURM_CONF": str(f / "slurm.conf")}
        self._daemon("munged", "--foreground", "--force", f"--key-file={key}", f"--socket={sock}",
                     f"--pid-file={f / 'munge' / 'munged.pid'}", f"--log-file={f / 'munge' / 'munged.log'}",
                     f"--seed-file={f / 'munge' / 'munged.seed'}", log="munged.out")
        self._wait(lambda: sock.exists(), "munged", "munge/munged.log")
        self._daemon("slurmctld", "-D", "-i", "-f", str(f / "slurm.conf"), log="slurmctld.out")
        self._daemon("slurmd", "-D", "-f", str(f / "slurm.conf"), "-N", host, log="slurmd.out")
        self._wait(self._node_idle, "slurmctld/slurmd", "slurmctld.log")
        self._stopping = threading.Event()
        threading.Thread(target=self._start_requeued_now, daemon=True).start()

    def run(self, *command: str) -> subprocess.CompletedProcess:
        return subprocess.run(command, capture_output=True, text=True, env={**os.environ, **self.env})

    def _start_requeued_now(self) -> None:
        """slurmctld holds a requeued job back for two minutes (Reason=BeginTime); a test has no minutes to spare."""
        while not self._stopping.wait(2):
            listing = self.run("squeue", "--noheader", "--array", "--states=PENDING", "--format=%i|%r").stdout
            for job_id in [line.split("|")[0] for line in listing.splitlines() if line.endswith("|BeginTime")]:
                self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")

    def _node_idle(self) -> bool:
        r = self.run("sinfo", "-h", "-o", "%T")
        return r.returncode == 0 and r.stdout.strip() in ("idle", "mixed")

    def _wait(self, ready, what: str, log: str, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if ready():
                return
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.5)
        tail = (self.folder / log).read_text(errors="replace")[-1500:] if (self.folder / log).exists() else ""
        self.stop()
        raise RuntimeError(f"{what} did not start; {log}:\n{tail}")

    def stop(self) -> None:
        """Cancel every job and wait for them to end, stop the daemons, then kill what a job left (slurmstepd
        ignores SIGTERM, and a job outliving the test would take CI's cores)."""
        if hasattr(self, "_stopping"):
            self._stopping.set()
        if self.procs:
            self.run("scancel", f"--user={os.getuid()}")
            end = time.monotonic() + 30
            while time.monotonic() < end and self.run("squeue", "--noheader").stdout.strip():
                time.sleep(1)
        for p in reversed(self.procs):
            p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs.clear()
        ours = f"SLURM_CONF={self.env.get('SLURM_CONF')}".encode()  # slurmstepd runs with slurmd's environment
        for pid in _descendants({pid for pid, comm in _processes().items() if comm == "slurmstepd" and ours in _environ(pid)}):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> "Cluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
