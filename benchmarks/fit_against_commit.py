"""Fit the ``tae`` preset on the organism with this tree and with an older commit, in turn.

    python benchmarks/fit_against_commit.py [--commit 8653571] [--rounds 3] [--threads 1]

Each fit runs in a fresh process (``tae demo``'s settings: batch size 64, one torch
thread unless ``--threads``), alternating between the two trees so both see the same
machine load (``--capture-threads N`` sets this tree's source ``num_threads``). The older tree comes from ``git archive`` into a temporary folder and runs
with this checkout's virtual environment. Printed per fit: CPU and wall seconds of the
whole fit, of the aggregator, prober and estimator, the rest (activation capture and
the pipeline's own work) and the sha256 of the saved ``tensors.safetensors`` file and of its tensors' names, shapes,
dtypes and bytes (the file's layout changed with the artifact format 2, commit 959d37c,
so older commits' files differ even where every value is equal); at the end
min / median / max per tree and the ratio of the minima. The default commit is the one
before the performance work of the fitting roles (``8653571``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ONE_FIT = r"""
import hashlib, json, sys, tempfile, time
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(int(sys.argv[2]))
from sklearn.linear_model import LogisticRegression  # noqa: F401 (imported before timing)
import tae_framework
from tae_framework import AlignmentPipeline
from tae_framework.organism import fitting_data, load
assert tae_framework.__file__.startswith(sys.argv[1]), tae_framework.__file__
model, tok, world = load()
data = fitting_data(world)
source = {"batch_size": 64, "progress": False}
if sys.argv[3] != "none":
    source["num_threads"] = int(sys.argv[3])
pipe = AlignmentPipeline.from_preset("tae", source=source)
roles = {}
def timed(obj, method, name):
    fn = getattr(obj, method)
    def wrapper(*a, **k):
        c = time.process_time()
        try:
            return fn(*a, **k)
        finally:
            roles[name] = roles.get(name, 0.0) + time.process_time() - c
    setattr(obj, method, wrapper)
timed(pipe.aggregator, "aggregate", "mig")
timed(pipe.prober, "fit", "prober")
timed(pipe.estimator, "fit", "estimator")
w, c = time.perf_counter(), time.process_time()
pipe.fit(model, tok, data)
wall, cpu = time.perf_counter() - w, time.process_time() - c
out = pipe.save(tempfile.mkdtemp() + "/p")
sha = hashlib.sha256((out / "tensors.safetensors").read_bytes()).hexdigest()
from safetensors.torch import load_file
values = hashlib.sha256()
for name, t in sorted(load_file(out / "tensors.safetensors").items()):
    values.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    values.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
print(json.dumps({"wall": wall, "cpu": cpu, **roles, "capture_and_rest": cpu - sum(roles.values()), "sha256": sha,
                  "values_sha256": values.hexdigest()}))
"""


def _fit(tree: Path, threads: int, capture_threads: int | None = None) -> dict:
    env = dict(os.environ, PYTHONWARNINGS="ignore", TAE_PROGRESS="0")
    run = subprocess.run(
        [sys.executable, "-c", ONE_FIT, str(tree), str(threads), str(capture_threads or "none")],
        capture_output=True, text=True, env=env, cwd=tempfile.gettempdir(), check=False,
    )  # fmt: skip
    if run.returncode:
        raise SystemExit(f"fit in {tree} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def _spread(xs: list[float]) -> str:
    return f"{min(xs):.2f} / {statistics.median(xs):.2f} / {max(xs):.2f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--commit", default="8653571", help="the older commit (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=3, help="fits per tree (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    ap.add_argument(
        "--capture-threads", type=int, default=None,
        help="this tree only: the source's num_threads (torch threads of the capture's forward passes)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tae-commit-") as tmp:
        archive = Path(tmp) / "old.tar"
        with open(archive, "wb") as fh:
            subprocess.run(["git", "-C", str(ROOT), "archive", args.commit], stdout=fh, check=True)
        old = Path(tmp) / "old"
        with tarfile.open(archive) as tar:
            tar.extractall(old, filter="data")
        got: dict[str, list[dict]] = {"old": [], "new": []}
        print(f"load average before: {os.getloadavg()}")
        for r in range(args.rounds):
            for name, tree in (("old", old), ("new", ROOT)):
                res = _fit(tree, args.threads, args.capture_threads if name == "new" else None)
                got[name].append(res)
                print(f"round {r} {name}: " + json.dumps({k: (round(v, 2) if isinstance(v, float) else v[:16]) for k, v in res.items()}))
        print(f"load average after: {os.getloadavg()}")
        for name in ("old", "new"):
            rows = got[name]
            print(
                f"{name} ({args.commit if name == 'old' else 'this tree'}): CPU s min / median / max "
                f"total {_spread([x['cpu'] for x in rows])}, capture and rest {_spread([x['capture_and_rest'] for x in rows])}, "
                f"wall {_spread([x['wall'] for x in rows])}; file sha256 {sorted({x['sha256'][:16] for x in rows})}, "
                f"tensor values sha256 {sorted({x['values_sha256'][:16] for x in rows})}"
            )
        ratio = min(x["cpu"] for x in got["old"]) / min(x["cpu"] for x in got["new"])
        print(f"whole fit, CPU seconds, old / new (min / min): {ratio:.2f}x")


if __name__ == "__main__":
    main()
