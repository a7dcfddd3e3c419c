"""Helpers of the DDP tests: launch `python -m slidescope ...` runs as real process groups, wait, clean up."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

#: variables that would make a child think it is a rank of some other job (a SLURM job running pytest...)
_RANK_VARIABLES = (
    "LOCAL_RANK",
    "RANK",
    "WORLD_SIZE",
    "NODE_RANK",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "PL_GLOBAL_SEED",
    "TORCHELASTIC_RUN_ID",
)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without rank or cluster variables, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _RANK_VARIABLES and not k.startswith(("SLURM_", "PMI_", "OMPI_"))
    }
    return env | extra


def launch(cmd: list[str], *, log: Path, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start ``cmd`` writing to ``log``, in its own session: on a timeout the whole group (rank 0 and the
    ranks Lightning started) can be ended."""
    with log.open("w") as fh:
        return subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )


def wait_all(
    procs: dict[int, subprocess.Popen], logs: dict[int, Path], *, timeout: float, what: str
) -> dict[int, tuple[int, str, float]]:
    """Per run: (exit code, output, seconds until it ended); a run still going after ``timeout`` is killed
    with its group and the test fails with its log."""
    t0 = time.monotonic()
    ended: dict[int, float] = {}
    while len(ended) < len(procs) and time.monotonic() - t0 < timeout:
        for n, proc in procs.items():
            if n not in ended and proc.poll() is not None:
                ended[n] = time.monotonic() - t0
        time.sleep(0.2)
    late = [n for n in procs if n not in ended]
    for n in late:
        os.killpg(procs[n].pid, signal.SIGKILL)
        procs[n].wait()
    if late:
        pytest.fail(
            f"{what} --devices {late[0]} did not finish in {timeout} s:\n{logs[late[0]].read_text()[-4000:]}"
        )
    return {n: (proc.returncode, logs[n].read_text(), ended[n]) for n, proc in procs.items()}


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (Linux ``/proc``; zombies do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
