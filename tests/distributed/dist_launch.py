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


def run(mode: str, out: Path, env: dict[str, str], nproc: int = 1) -> subprocess.CompletedProcess:
    if nproc == 1:
        cmd = [sys.executable, str(WORKER), mode, str(out)]
    else:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "--monitor-interval=0.2", str(WORKER), mode, str(out),
        ]  # fmt: skip
    try:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:  # pragma: no cover - a hang is a failure, not a stuck CI
        pytest.fail(f"{mode} with {nproc} process(es) did not finish in {TIMEOUT_S}s:\n{exc.stderr}")


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr[-4000:]
    return result


