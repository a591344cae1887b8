"""Running the framework over several processes with ``torch.distributed``.

The framework does not schedule anything itself: a launcher (``torchrun``,
``accelerate launch``, a cluster's ``srun``) starts one process per rank and sets the
usual environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` ...). This module gives
those processes what they need to share work:

* :func:`init` joins the process group named by the environment (gloo on CPU, NCCL
  for CUDA tensors plus gloo for host-side messages) and checks that every rank runs
  the same versions of tae_framework, torch and transformers.
* :func:`rank`, :func:`world_size`, :func:`is_main`, :func:`barrier` and
  :func:`main_first`; :func:`share` deals a list of work items out to the ranks.
* :class:`SharedCheckpoint`: JSON-lines checkpoints written by several ranks at once.
  Each rank appends its own rows to ``<file>.rank<r>``; the main rank merges them into
  ``<file>`` when all ranks are done, and on the next start, so rows written by a rank
  that finished (or by every rank before one of them died) are never lost.
* :func:`gather_site` / :func:`local_site`: the head-wise site of a tensor-parallel
  model (``tp_plan="auto"``), where each rank holds a contiguous slice of the heads.

Activation capture shares its batches between ranks through its shard cache (see
:class:`~tae_framework.sources.hf.HFActivationSource`); the evaluation runner shares
the items of every protocol through :class:`SharedCheckpoint`. Nothing here pickles:
messages between ranks are UTF-8 JSON in ``uint8`` tensors.

Everything is a no-op in a single process (no process group, or a world of one).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch

from .errors import ConfigError, TAEError

__all__ = [
    "DistributedError",
    "SharedCheckpoint",
    "all_gather_json",
    "barrier",
    "check_versions",
    "gather_site",
    "init",
    "is_distributed",
    "is_main",
    "local_site",
    "main_first",
    "rank",
    "refuse_tensor_parallel",
    "share",
    "shard_folder",
    "tp_degree",
    "world_size",
]

T = TypeVar("T")

#: Seconds a rank waits for the others at a barrier before the run is declared stuck.
DEFAULT_TIMEOUT_S = float(os.environ.get("TAE_DIST_TIMEOUT", "1800"))


class DistributedError(TAEError, RuntimeError):
    """The processes of a distributed run disagree or one of them is gone."""


# ----------------------------------------------------------------------------------
# the process group
# ----------------------------------------------------------------------------------
def _dist():
    import torch.distributed as dist

    return dist


_warned_uninitialised = False


def is_distributed() -> bool:
    """Whether a process group with more than one rank is active.

    A process started by a launcher (``WORLD_SIZE`` > 1) that never joined the group is
    warned about once: every rank would then do all the work and write the same files.
    """
    global _warned_uninitialised
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if _launched() and not _warned_uninitialised:
        import warnings

        _warned_uninitialised = True
        warnings.warn(
            f"this process was started as one of {os.environ.get('WORLD_SIZE')} ranks but has not "
            "joined their process group, so it works alone (every rank repeats all the work): "
            "call tae_framework.distributed.init() at the start of the script",
            RuntimeWarning,
            stacklevel=2,
        )
    return False


def rank() -> int:
    """This process's rank (0 without a process group)."""
    dist = _dist()
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    dist = _dist()
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Whether this process writes the run's shared files (rank 0)."""
    return rank() == 0


def _launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def init(timeout_s: float | None = None) -> bool:
    """Join the process group described by the launcher's environment.

    Does nothing in a plain process (``WORLD_SIZE`` unset or 1) or when a group exists
    already (e.g. created by ``from_pretrained(tp_plan="auto")`` or accelerate). Uses
    gloo for CPU tensors and, when CUDA is available, NCCL for CUDA tensors. Then checks
    the versions of every rank (:func:`check_versions`).

    Returns:
        Whether the process is part of a group with more than one rank.

    Raises:
        DistributedError: the group cannot be formed, or the ranks run different versions.
    """
    dist = _dist()
    if not dist.is_available():
        if _launched():
            raise DistributedError(
                "WORLD_SIZE > 1 but this torch build has no torch.distributed: install a torch "
                "with distributed support, or run a single process"
            )
        return False
    if not dist.is_initialized():
        if not _launched():
            return False
        missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise DistributedError(
                f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} is not set: start the "
                "processes with torchrun (or accelerate launch), which sets the whole rendezvous"
            )
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        try:
            dist.init_process_group(
                backend=backend, timeout=timedelta(seconds=timeout_s or DEFAULT_TIMEOUT_S)
            )
        except Exception as exc:  # noqa: BLE001 - reported with the fix
            raise DistributedError(
                f"cannot join the process group ({type(exc).__name__}: {exc}); check that every "
                "rank was started by the same torchrun command and can reach MASTER_ADDR:MASTER_PORT"
            ) from None
    if dist.get_world_size() > 1:
        check_versions()
    return is_distributed()


def _versions() -> dict[str, str]:
    import transformers

    from ._version import __version__

    return {"tae_framework": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def check_versions(versions: dict[str, str] | None = None) -> None:
    """Refuse a run whose ranks import different versions of the framework or its engines.

    Different versions could capture, fit or score differently, so the merged results
    would mix two programs. ``versions`` overrides this process's own (for tests).

    Raises:
        DistributedError: naming each rank's versions and the fix.
    """
    mine = versions if versions is not None else _versions()
    every = all_gather_json(mine)
    if any(v != every[0] for v in every):
        rows = "; ".join(f"rank {r}: " + ", ".join(f"{k} {v}" for k, v in sorted(d.items())) for r, d in enumerate(every))
        raise DistributedError(
            f"the ranks of this run import different versions ({rows}): install the same "
            "tae_framework, torch and transformers in every node's environment (nothing was run)"
        )


def _comm_device() -> torch.device:
    dist = _dist()
    backend = dist.get_backend()
    if "nccl" in str(backend) and "gloo" not in str(backend):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_json(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (JSON-serialisable), in rank order; ``[obj]`` in one process."""
    if not is_distributed():
        return [obj]
    dist = _dist()
    device = _comm_device()
    data = torch.frombuffer(bytearray(json.dumps(obj, sort_keys=True).encode("utf-8")), dtype=torch.uint8)
    n = torch.tensor([data.numel()], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    width = int(max(int(s) for s in sizes))
    padded = torch.zeros(width, dtype=torch.uint8, device=device)
    padded[: data.numel()] = data.to(device)
    out = [torch.zeros_like(padded) for _ in range(world_size())]
    dist.all_gather(out, padded)
    return [json.loads(bytes(t[: int(s)].cpu().tolist()).decode("utf-8")) for t, s in zip(out, sizes)]


def barrier(what: str) -> None:
    """Wait for every rank; ``what`` names the step in the error when a rank never arrives."""
    if not is_distributed():
        return
    dist = _dist()
    try:
        if dist.get_backend() == "gloo":
            # names the ranks that did not arrive instead of hanging silently
            dist.monitored_barrier(timeout=timedelta(seconds=DEFAULT_TIMEOUT_S))
        else:
            dist.barrier()
    except Exception as exc:  # noqa: BLE001 - reported with the fix
        raise DistributedError(
            f"rank {rank()} waited for the other ranks after {what} and they did not arrive "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}). "
            "A rank died or is stuck: check its log, then run the same command again; the work "
            "already written (activation shards, checkpoints) is reused"
        ) from None


@contextlib.contextmanager
def main_first(what: str = "set-up") -> Iterator[None]:
    """The main rank runs the block first (e.g. creating a folder); the others after it."""
    if not is_main():
        barrier(what)
    yield
    if is_main():
        barrier(what)


def share(items: Sequence[T], what: str = "items", allow_idle: bool = False) -> list[T]:
    """This rank's share of ``items``: every ``world_size``-th item starting at its rank.

    The deal depends only on the order of ``items``, so every rank computes the same
    partition without talking to the others.

    Raises:
        ConfigError: more ranks than items (some rank would have nothing to do), unless
            ``allow_idle``.
    """
    n, w = len(items), world_size()
    if w > n and not allow_idle:
        raise ConfigError(
            f"{w} processes share {n} {what}: every rank needs at least one. Start at most {n} "
            f"processes (torchrun --nproc-per-node {max(n, 1)}), or give more {what}"
        )
    return list(items[rank() :: w])


def shard_folder(cache_dir: str | os.PathLike | None) -> Path:
    """Where ranks exchange activation shards: ``cache_dir``, else ``$TAE_SHARD_DIR``,
    else ``$XDG_CACHE_HOME/tae_framework/activations`` (``~/.cache/...``).

    Every rank must see the same folder (one node, or a shared filesystem); this is
    checked: the main rank writes a token file and every other rank reads it back.

    Raises:
        DistributedError: the folder is not shared between the ranks.
    """
    if cache_dir is not None:
        folder = Path(cache_dir).expanduser()
    elif os.environ.get("TAE_SHARD_DIR"):
        folder = Path(os.environ["TAE_SHARD_DIR"]).expanduser()
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        folder = base / "tae_framework" / "activations"
    token = folder / ".ranks"
    with main_first("creating the shard folder"):
        if is_main():
            try:
                folder.mkdir(parents=True, exist_ok=True)
                from ._io import atomic_write_bytes

                atomic_write_bytes(token, str(os.getpid()).encode())
            except OSError as exc:
                raise ConfigError(f"cannot create the shard folder {folder}: {exc}") from None
    seen = token.read_text() if token.is_file() else None
    views = all_gather_json(seen)
    if any(v != views[0] for v in views):
        lost = [r for r, v in enumerate(views) if v != views[0]]
        raise DistributedError(
            f"rank(s) {lost} do not see the shard folder of rank 0 (here: {folder}): the ranks exchange "
            "activations through files, so the folder must be on a filesystem every node mounts. "
            "Set the source's cache_dir (or TAE_SHARD_DIR) to such a folder"
        )
    return folder


# ----------------------------------------------------------------------------------
# checkpoints written by several ranks
# ----------------------------------------------------------------------------------
class SharedCheckpoint:
    """A JSON-lines checkpoint (:class:`~tae_framework.evaluation.rundir.Checkpoint`)
    whose rows are computed by every rank.

    Use::

        shared = SharedCheckpoint(path, total=len(items))  # merges leftovers of a crashed run
        todo = shared.share([it for it in items if it.id not in shared.done], n)
        for chunk in chunks(todo, n):
            shared.add(rows_of(chunk))                  # this rank's own file
        ck = shared.finish()                            # every row of every rank

    In one process it is the plain checkpoint: ``share`` returns everything and ``add``
    appends to ``path``.
    """

    def __init__(self, path: str | os.PathLike, what: str = "items", total: int | None = None):
        from .evaluation.rundir import Checkpoint

        self._cls = Checkpoint
        self.path = Path(path)
        self.what = what
        self.distributed = is_distributed()
        if self.distributed and total is not None:
            share(range(total), what)  # more ranks than items: refused before anything runs
        if self.distributed:
            barrier(f"starting {self.path.name}")
            if is_main():
                self._merge()
            barrier(f"merging the shards of {self.path.name}")
        self.done = Checkpoint(self.path)
        self._own = (
            Checkpoint(self.path.with_name(f"{self.path.name}.rank{rank()}")) if self.distributed else self.done
        )

    def _rank_files(self) -> list[Path]:
        return sorted(self.path.parent.glob(f"{self.path.name}.rank*"))

    def _merge(self) -> None:
        main = self._cls(self.path)
        for part in self._rank_files():
            rows = [r for i, r in self._cls(part).rows.items() if i not in main]
            if rows:
                main.add(rows)
            part.unlink()

    def share(self, todo: Sequence[T], batch_size: int = 1) -> list[T]:
        """This rank's share of the rows still to compute: whole batches of
        ``batch_size`` rows dealt out in turn, so every batch holds the same rows as in
        one process (padding, hence rounding, is the same). Idle ranks are fine here: a
        resumed run may have fewer batches left than ranks."""
        if not self.distributed:
            return list(todo)
        batches = [list(todo[i : i + batch_size]) for i in range(0, len(todo), max(1, batch_size))]
        return [row for b in share(batches, self.what, allow_idle=True) for row in b]

    def add(self, rows: Sequence[dict[str, Any]]) -> None:
        self._own.add(rows)

    def finish(self):
        """Wait for every rank, merge their rows; returns the complete checkpoint."""
        if not self.distributed:
            return self.done
        barrier(f"computing {self.path.name}")
        if is_main():
            self._merge()
        barrier(f"merging {self.path.name}")
        self.done = self._cls(self.path)
        return self.done


# ----------------------------------------------------------------------------------
# tensor parallelism
# ----------------------------------------------------------------------------------
def tp_degree(model: Any) -> int:
    """The tensor-parallel degree of a transformers model (1 when not sharded)."""
    size = getattr(model, "tp_size", None) if model is not None else None
    return int(size) if isinstance(size, int) and size > 1 else 1


def refuse_tensor_parallel(model: Any, what: str) -> None:
    """Refuse ``what`` on a tensor-parallel model: every rank of such a model must run
    the same forward passes, so its items cannot be dealt out between the ranks.

    Raises:
        DistributedError: naming the fix.
    """
    if tp_degree(model) > 1:
        raise DistributedError(
            f"{what} deals items out between ranks, but this model is tensor-parallel (tp_size "
            f"{tp_degree(model)}): every rank must run the same forward passes. Evaluate a model "
            "loaded with device_map='auto' (one process, or one per replica under torchrun) instead; "
            "a pipeline fitted under tensor parallelism keeps global head indices and loads anywhere"
        )


def _tp_check(width: int, full: int) -> int:
    w = world_size()
    if width * w != full:
        raise DistributedError(
            f"the head-wise site has {width} values on this rank but the model has {full}: with "
            f"{w} ranks a tensor-parallel slice would have {full // max(w, 1)}. Only a tensor-"
            "parallel group spanning the whole world (torchrun --nproc-per-node = tp size) is supported"
        )
    return w


def gather_site(x: torch.Tensor, full: int) -> torch.Tensor:
    """The whole head-wise site from this rank's slice ``x`` (``[..., full / world]``).

    Rank ``r`` of a tensor-parallel model holds heads ``r*H/W .. (r+1)*H/W - 1``
    (transformers splits the query/key/value projections column-wise into contiguous
    blocks), so the slices are concatenated in rank order. A tensor that is already
    whole is returned unchanged.
    """
    width = x.shape[-1]
    if width == full:
        return x
    w = _tp_check(width, full)
    parts = [torch.empty_like(x) for _ in range(w)]
    _dist().all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=-1)


def local_site(x: torch.Tensor, width: int) -> torch.Tensor:
    """This rank's slice (``width`` values) of a whole head-wise tensor ``x``."""
    if x.shape[-1] == width:
        return x
    _tp_check(width, x.shape[-1])
    r = rank()
    return x[..., r * width : (r + 1) * width]
