"""Launching the worker of the multi-process tests: one plain process, or torchrun
with a free port (``--standalone``) and a timeout, so a hang fails instead of blocking CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("worker.py")
TIMEOUT_S = 240


def env_for(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", TAE_SHARD_DIR=str(tmp / "shards"), TAE_DIST_TIMEOUT="120", **extra)
    return env


def _command(mode: str, out: Path, nproc: int) -> list[str]:
    if nproc == 1:
        return [sys.executable, str(WORKER), mode, str(out)]
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        "--monitor-interval=0.2", str(WORKER), mode, str(out),
    ]  # fmt: skip


def run_together(*launches: tuple[str, Path, dict[str, str], int]) -> list[subprocess.CompletedProcess]:
    """Start every ``(mode, out, env, nproc)`` launch at once (they see the same code and
    share the wall time), wait for all, each with the timeout."""
    procs = [
        (subprocess.Popen(_command(mode, out, n), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), mode, n)
        for mode, out, env, n in launches
    ]
    results = []
    for proc, mode, n in procs:
        try:
            stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hang is a failure, not a stuck CI
            for p, _, _ in procs:
                p.kill()
            pytest.fail(f"{mode} with {n} process(es) did not finish in {TIMEOUT_S}s")
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return results


def run(mode: str, out: Path, env: dict[str, str], nproc: int = 1) -> subprocess.CompletedProcess:
    return run_together((mode, out, env, nproc))[0]


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr[-4000:]
    return result


