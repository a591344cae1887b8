"""Worker of the multi-process tests: run with ``python worker.py MODE OUT`` (one
process) or under ``torchrun --nproc-per-node 2`` (two gloo processes on CPU).

Modes:

* ``fit``: ``tae fit`` TAE on a toy contrast set (``TAE_TEST_DATA``) with the tiny model
  saved in ``TAE_TEST_MODEL``, into ``OUT/pipeline``.
* ``fit-eval``: ``fit``, then evaluate ITI on fold 1 of a toy task (multiple choice +
  greedy generation judged by a deterministic judge) and sweep a 2 x 2 K x alpha grid on
  it, into ``OUT/runs``. Every rank records how many batches it pushed through the model
  in ``OUT/forwards-rank<r>.json``.
* ``bad-inputs``: ranks that report different framework versions, more ranks than texts
  to capture, ranks whose shard folders differ; the errors are recorded.
* ``tp``: tensor parallelism (``tp_plan="auto"``): the logits of an edited global head,
  the captured activations, a TAE fit over every head and its generations, against the
  same on the whole model (loaded in the same process).

``TAE_TEST_DIE_AFTER=N`` makes rank 1 exit after writing N activation shards;
``TAE_TEST_FAKE_VERSION=V`` makes rank 1 import framework version V (refused at start).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import ClassVar

import torch

torch.set_num_threads(1)  # one process and two processes compute with the same kernels

from tae_framework import distributed  # noqa: E402
from tae_framework.data import ContrastDataset, ContrastExample  # noqa: E402
from tae_framework.errors import TAEError  # noqa: E402
from tae_framework.evaluation.judge import Judge  # noqa: E402
from tae_framework.sources import hf  # noqa: E402
from tae_framework.tasks.base import EvalItem, Task, make_folds  # noqa: E402
from tae_framework.testing.models import tiny_model  # noqa: E402

OVERRIDES = {"prober": {"top_k": 4}, "source": {"progress": False, "batch_size": 2}}


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _instrument(out: Path) -> None:
    """Count forward passes per rank; optionally die after some shards (rank 1)."""
    counts = {"forwards": 0, "saved": 0}
    forward, save = hf.HFActivationSource._forward_batch, hf._ShardStore.save
    die_after = int(os.environ.get("TAE_TEST_DIE_AFTER", "0"))

    def counting_forward(self, *args, **kwargs):
        counts["forwards"] += 1
        (out / f"forwards-rank{_rank()}.json").write_text(json.dumps(counts))
        return forward(self, *args, **kwargs)

    def dying_save(self, b, acts):
        save(self, b, acts)
        counts["saved"] += 1
        (out / f"forwards-rank{_rank()}.json").write_text(json.dumps(counts))
        if die_after and _rank() == 1 and counts["saved"] >= die_after:
            os._exit(3)  # a crash: no clean-up, no exception handling

    hf.HFActivationSource._forward_batch = counting_forward
    hf._ShardStore.save = dying_save


class ParityJudge(Judge):
    name: ClassVar[str] = "parity"
    metrics: ClassVar[tuple[str, ...]] = ("true", "info")

    def score(self, questions, answers):
        return {
            "true": torch.tensor([1.0 if len(a) % 2 == 0 else 0.0 for a in answers]),
            "info": torch.tensor([min(1.0, len(a) / 10) for a in answers]),
        }


class ToyTask(Task):
    """Ten questions about where things are; two folds."""

    name = "toy-where"
    judge_metrics = ("true", "info")
    default_judge = "parity"

    def __init__(self, n: int = 10):
        self.ids = [f"q{i}" for i in range(n)]

    @property
    def question_ids(self):
        return list(self.ids)

    def folds(self):
        return make_folds(self.ids, num_folds=2, val_fraction=0.34)

    def fitting_data(self, fold, part="development"):
        rows = []
        for i in self.part_ids(fold, part):
            g = int(i[1:])
            q = f"Q: where is {chr(97 + g)}? A:"
            rows += [ContrastExample(prompt=q, completion=f" in {g} town .", label=1, group=i),
                     ContrastExample(prompt=q, completion=f" at {g + 3} sea .", label=0, group=i)]
        return ContrastDataset(rows)

    def eval_items(self, ids=None):
        out = []
        for i in self.resolve_ids(ids):
            g = int(i[1:])
            q = f"Q: where is {chr(97 + g)}? A:"
            out.append(EvalItem(id=i, question=q, mc_prompt=q, mc_true=(f" in {g} town .",),
                                mc_false=(f" at {g + 3} sea .", " nowhere ."), generation_prompt=q))
        return out



def fit(out: Path) -> None:
    """``tae fit`` on the saved tiny model (``TAE_TEST_MODEL``) and ``TAE_TEST_DATA``."""
    from tae_framework.cli import main as tae

    rc = tae([
        "fit", "--model", os.environ["TAE_TEST_MODEL"], "--data", os.environ["TAE_TEST_DATA"],
        "--preset", "tae", "--set", "prober.top_k=4", "--set", "source.batch_size=2",
        "--set", "source.progress=false", "--out", str(out / "pipeline"),
    ])  # fmt: skip
    if rc != 0:
        sys.exit(rc)


def fit_eval(out: Path) -> None:
    from tae_framework.evaluation.runner import run_eval
    from tae_framework.evaluation.sweep import run_sweep
    from tae_framework.models.loading import load_model
    from tae_framework.plugins import create_plugin_manager

    fit(out)
    model, tok = load_model(os.environ["TAE_TEST_MODEL"], dtype="float32")
    reg = create_plugin_manager().registry
    reg.add_component(ParityJudge, "test", "test", "0")
    reg.add_task("toy-where", ToyTask, "test", "test", "0")
    cfg = {
        "task": "toy-where", "method": "iti", "overrides": OVERRIDES, "max_new_tokens": 4,
        "batch_size": 2, "out_dir": str(out / "runs"), "run": "toy", "baseline": True,
        "strength_figures": 0, "progress": False, "folds": [1],
    }  # fmt: skip
    run_eval(model, tok, cfg, reg)
    run_sweep(model, tok, {**cfg, "run": "grid"}, ks=[2, 4], alphas=[1.0, 5.0], registry=reg)


def bad_inputs(out: Path) -> None:
    """Rank 1 reports another framework version; then both ranks capture one text.
    Each error is written to ``OUT/errors-rank<r>.json``."""
    errors = {}
    mine = dict(distributed._versions())
    if distributed.rank() == 1:
        mine["tae_framework"] = "0.0.0-other"
    try:
        distributed.check_versions(mine)
    except TAEError as exc:
        errors["versions"] = str(exc)
    model, tok = tiny_model("llama")
    try:
        list(hf.HFActivationSource(progress=False).capture(model, tok, ["Q: where is a? A: in 0 town ."]))
    except TAEError as exc:
        errors["capture"] = str(exc)
    private = hf.HFActivationSource(progress=False, cache_dir=str(out / f"private-{distributed.rank()}"))
    try:  # each rank names its own folder: as if the nodes did not share a filesystem
        list(private.capture(model, tok, ["Q: where is a? A: in 0 town .", "Q: where is b? A: at 4 sea ."]))
    except TAEError as exc:
        errors["folder"] = str(exc)
    (out / f"errors-rank{distributed.rank()}.json").write_text(json.dumps(errors))


def tensor_parallel(out: Path) -> None:
    from transformers import AutoModelForCausalLM

    from tae_framework import AlignmentPipeline
    from tae_framework.editing import EditSession, LayerEdit
    from tae_framework.models.generic import GenericAdapter
    from tae_framework.testing.data import toy_contrast

    path = Path(os.environ["TAE_TEST_MODEL"])
    tp = AutoModelForCausalLM.from_pretrained(path, tp_plan="auto", dtype=torch.float32).eval()
    assert distributed.tp_degree(tp) == distributed.world_size() == 2, "the model is not tensor-parallel"
    whole = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    H = whole.config.num_attention_heads
    head = H - 1  # a global head index held by rank 1
    d = whole.config.hidden_size // H
    gen = torch.Generator().manual_seed(0)
    edits = [LayerEdit(1, torch.tensor([head, 0]), torch.randn(2, d, generator=gen), torch.tensor([3.0, 0.5]),
                       torch.tensor([0, 1]))]
    ids = torch.tensor([[1, 5, 7, 9, 11, 3], [2, 4, 6, 8, 10, 12]])
    results = {}
    for name, model in (("tp", tp), ("whole", whole)):
        with torch.no_grad():
            plain = model(ids).logits
            with EditSession(model, GenericAdapter(), "heads", edits, scope="all"):
                edited = model(ids).logits
        results[name] = (plain, edited)
    src = hf.HFActivationSource(progress=False)
    texts = ["Q: where is a? A: in 0 town .", "Q: where is b? A: at 4 sea ."]
    tok = tiny_model("llama")[1]
    cap_tp = hf.capture_all(src, tp, tok, texts, site="heads", adapter=GenericAdapter())[0].acts
    cap_whole = hf.capture_all(src, whole, tok, texts, site="heads", adapter=GenericAdapter())[0].acts
    fitted = {}
    for name, model in (("tp", tp), ("whole", whole)):
        every_head = {**OVERRIDES, "prober": {"top_k": 8}}  # heads of both ranks edited
        pipe = AlignmentPipeline.from_preset("tae", **every_head).fit(model, tok, toy_contrast(8))
        fitted[name] = (pipe, pipe.generate(model, tok, texts, max_new_tokens=4))
    t_tp, t_whole = fitted["tp"][0].targets_, fitted["whole"][0].targets_
    report = {
        "fit_same_heads": t_tp.layers.tolist() == t_whole.layers.tolist() and t_tp.units.tolist() == t_whole.units.tolist(),
        "fit_heads": [[int(a), int(b)] for a, b in zip(t_tp.layers.tolist(), t_tp.units.tolist())],
        "fit_direction_diff": (t_tp.directions - t_whole.directions).abs().max().item(),
        "same_generations": fitted["tp"][1] == fitted["whole"][1],
        "rank": distributed.rank(),
        "plain_diff": (results["tp"][0] - results["whole"][0]).abs().max().item(),
        "edited_diff": (results["tp"][1] - results["whole"][1]).abs().max().item(),
        "edit_effect": (results["whole"][1] - results["whole"][0]).abs().max().item(),
        "capture_shape": list(cap_tp.shape),
        "capture_diff": (cap_tp - cap_whole).abs().max().item(),
    }
    (out / f"tp-rank{distributed.rank()}.json").write_text(json.dumps(report))


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    _instrument(out)
    fake = os.environ.get("TAE_TEST_FAKE_VERSION")
    if fake and _rank() == 1:
        import tae_framework._version

        tae_framework._version.__version__ = fake
    try:
        if mode != "tp":  # tp: from_pretrained(tp_plan="auto") forms the group itself
            distributed.init()
        {"fit": fit, "fit-eval": fit_eval, "bad-inputs": bad_inputs, "tp": tensor_parallel}[mode](out)
    except TAEError as exc:
        print(f"worker: error: {exc}", file=sys.stderr)
        sys.exit(2)
    if distributed.is_distributed():
        distributed.barrier("the end of the test")


if __name__ == "__main__":
    main()
