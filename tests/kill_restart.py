"""Start a training command, kill -9 it once its metrics.jsonl has some rows, restart it to the end."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def train_env() -> dict[str, str]:
    """The environment of a training subprocess: this tree's sources, one thread, no launcher variables."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def kill_after_rows(
    cmd: list[str],
    metrics: Path,
    rows: int,
    *,
    victim: Callable[[int], int] | None = None,
    timeout: float = 300.0,
) -> None:
    """Run ``cmd`` and SIGKILL it as soon as ``metrics`` holds ``rows`` lines (mid-run: the following step,
    or the checkpoint after the row, is cut off). ``victim(pid)`` picks the one process to kill among the
    command's (e.g. one worker of a launcher, which then stops the others); default: all of them. Fails if
    the run ends first."""
    proc = subprocess.Popen(
        cmd, env=train_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            if metrics.exists() and metrics.read_text().count("\n") >= rows:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished (or failed) before it could be killed"
        if victim is not None:
            os.kill(victim(proc.pid), signal.SIGKILL)
            try:
                proc.wait(timeout=120)  # the launcher notices the dead worker and stops the rest
            except subprocess.TimeoutExpired:
                pass
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # every process of the run
        proc.wait()
        try:  # workers left behind by a launcher that was itself killed
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_to_the_end(cmd: list[str], *, timeout: float = 600.0) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, env=train_env(), capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return res
