"""Fitting TAE on the shipped organism, and the half-precision lens on it (``make bench``).

What is measured (``pytest benchmarks/test_bench_fit.py --benchmark-enable -s``):

* The ``tae`` preset fitted on the organism (720 contrast texts, K = 16 heads), the way
  ``tae demo`` fits it (one torch thread): wall-clock and CPU seconds of every role,
  and the sha256 of the saved ``tensors.safetensors`` (to compare with other commits:
  the fitted tensors must stay byte-identical).
* The same fit with a plain reference capture (:class:`PlainCapture`: batches in input
  order, a full forward pass with plain pre-hooks, nothing kept between the fit's three
  capture passes, nothing skipped) against the framework's source, fresh pipelines,
  interleaved: the saved ``tensors.safetensors`` must be byte-identical, and the ratio
  of CPU seconds of the whole fit (min / min) is reported and bounded. The comparison
  with an older commit of the whole framework is ``benchmarks/fit_against_commit.py``.
* The ``mai`` estimator's fit on that run's token data, with BLAS/OpenMP limited to one
  thread per head (the estimator) against the same scikit-learn fits under the
  process's default pools (the straightforward loop the estimator used before): min
  over repeats, ratio min / min, identical coefficients asserted.
* The half-precision lens (``lens_dtype="float16"``) against the exact lens on the
  organism: largest |u_half - u_exact| at every edited layer over 96 deceptive prompts,
  and the share of identical greedy generations.

Under the default ``--benchmark-disable`` the same checks run with fewer repeats; the
identity checks are asserted, the ratios only reported.
"""

from __future__ import annotations

import hashlib
import statistics
import time

import numpy as np
import pytest
import torch
from bench_report import say as _say
from sklearn.linear_model import LogisticRegression

from tae_framework import AlignmentPipeline
from tae_framework.estimators import mai
from tae_framework.estimators.mai import TokenMisalignmentEstimator
from tae_framework.sources.base import ActivationSource
from tae_framework.types import TextActivations

OVR = {"source": {"batch_size": 64, "progress": False}}


def _benchmarking_enabled(config: pytest.Config) -> bool:
    return bool(config.getoption("benchmark_enable")) or not config.getoption("benchmark_disable")




def _spread(times: list[float]) -> str:
    return f"min {min(times):.3f} / median {statistics.median(times):.3f} / max {max(times):.3f} s"


@pytest.fixture(scope="module")
def organism(request, tmp_path_factory):
    from tae_framework.organism import fitting_data, load

    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as `tae demo` fits the organism
    model, tok, world = load()
    data = fitting_data(world)
    pipe = AlignmentPipeline.from_preset("tae", **OVR)
    stages: dict[str, list[float]] = {}
    seen: dict[str, object] = {}

    def timed(obj, method, name):
        fn = getattr(obj, method)

        def wrapper(*args, **kwargs):
            w, c = time.perf_counter(), time.process_time()
            out = fn(*args, **kwargs)
            got = stages.setdefault(name, [0.0, 0.0])
            got[0] += time.perf_counter() - w
            got[1] += time.process_time() - c
            return out

        setattr(obj, method, wrapper)

    original_fit = pipe.estimator.fit

    def keep_inputs(inputs):
        seen["inputs"] = inputs
        return original_fit(inputs)

    pipe.estimator.fit = keep_inputs
    timed(pipe.aggregator, "aggregate", "mig aggregator")
    timed(pipe.prober, "fit", "prober")
    timed(pipe.estimator, "fit", "estimator")
    w, c = time.perf_counter(), time.process_time()
    pipe.fit(model, tok, data)
    total = (time.perf_counter() - w, time.process_time() - c)
    out = pipe.save(tmp_path_factory.mktemp("tae-organism"))
    digest = hashlib.sha256((out / "tensors.safetensors").read_bytes()).hexdigest()
    _say(
        request.config,
        f"\ntae preset on the organism ({len(data)} texts, 1 torch thread): total {total[0]:.2f} s wall, "
        f"{total[1]:.2f} s CPU; "
        + "; ".join(f"{k} {v[0]:.2f} s wall / {v[1]:.2f} s CPU" for k, v in stages.items())
        + f"; tensors.safetensors sha256 {digest}",
    )
    yield {
        "model": model, "tok": tok, "world": world, "data": data, "pipe": pipe, "inputs": seen["inputs"],
        "digest": digest,
    }
    torch.set_num_threads(previous)


class PlainCapture(ActivationSource):
    """The reference capture: texts in input order, 64 per batch, right padding, one full
    forward pass per batch with a plain pre-hook copying every captured layer's o_proj
    input, each text's rows sliced out. Nothing is kept between calls, nothing skipped."""

    name = "plain-reference"
    batch_size = 64

    def capture(self, model, tokenizer, texts, spans=None, layers=None, site="heads", adapter=None):
        assert site == "heads"
        layers = list(range(model.config.num_hidden_layers)) if layers is None else [int(x) for x in layers]
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start : start + self.batch_size])
            enc = tokenizer(chunk, return_offsets_mapping=True)
            lengths = [len(ids) for ids in enc["input_ids"]]
            ids = torch.full((len(chunk), max(lengths)), int(tokenizer.pad_token_id or 0), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, row in enumerate(enc["input_ids"]):
                ids[r, : len(row)] = torch.tensor(row)
                mask[r, : len(row)] = 1
            got = {}
            hooks = [
                model.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(
                    lambda m, args, layer=layer, got=got: got.__setitem__(layer, args[0].detach().clone())
                )
                for layer in layers
            ]
            try:
                with torch.no_grad():
                    model(input_ids=ids, attention_mask=mask)
            finally:
                for h in hooks:
                    h.remove()
            out = []
            for r in range(len(chunk)):
                n, i = lengths[r], start + r
                span = (0, n)
                if spans is not None:
                    s, e = spans[i]
                    hits = [k for k, (a, b) in enumerate(enc["offset_mapping"][r]) if b > a and a < e and b > s]
                    span = (hits[0], hits[-1] + 1)
                acts = torch.stack([got[layer][r, :n] for layer in layers])
                out.append(TextActivations(i, acts, torch.tensor(enc["input_ids"][r]), span, tuple(layers)))
            yield out


def _fit_cpu(model, tok, data, source=None) -> tuple[float, float, str, AlignmentPipeline, str]:
    """(CPU seconds of the fit, CPU seconds outside the aggregator/prober/estimator, sha256
    of the saved tensors, the pipeline, folder) for a fresh ``tae`` pipeline."""
    import tempfile

    pipe = AlignmentPipeline.from_preset("tae", **OVR)
    if source is not None:
        pipe.source = source
    roles = [0.0]

    def timed(obj, method):
        fn = getattr(obj, method)

        def wrapper(*args, **kwargs):
            c = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                roles[0] += time.process_time() - c

        setattr(obj, method, wrapper)

    timed(pipe.aggregator, "aggregate")
    timed(pipe.prober, "fit")
    timed(pipe.estimator, "fit")
    c = time.process_time()
    pipe.fit(model, tok, data)
    total = time.process_time() - c
    folder = tempfile.mkdtemp(prefix="tae-fit-")
    pipe.source = AlignmentPipeline.from_preset("tae", **OVR).source  # saved like any preset fit
    out = pipe.save(f"{folder}/pipe")
    digest = hashlib.sha256((out / "tensors.safetensors").read_bytes()).hexdigest()
    return total, total - roles[0], digest, pipe, folder


def test_fit_against_a_plain_reference_capture(request, organism):
    model, tok, data = organism["model"], organism["tok"], organism["data"]
    rounds = 3 if _benchmarking_enabled(request.config) else 1
    ours, plain, digests = [], [], set()
    for _ in range(rounds):  # interleaved, fresh pipelines (nothing kept from an earlier fit)
        total, capture, digest, _, _ = _fit_cpu(model, tok, data)
        ours.append((total, capture))
        digests.add(("ours", digest))
        total, capture, digest, _, _ = _fit_cpu(model, tok, data, PlainCapture())
        plain.append((total, capture))
        digests.add(("plain", digest))
    assert len({d for _, d in digests}) == 1, f"saved tensors differ: {sorted(digests)}"
    assert digests == {("ours", organism["digest"]), ("plain", organism["digest"])}
    ratio = min(t for t, _ in plain) / min(t for t, _ in ours)
    share = [c / t for t, c in ours]
    _say(
        request.config,
        f"\ntae preset on the organism, CPU seconds (total / capture and glue), {rounds} interleaved rounds: "
        f"plain reference capture {[f'{t:.2f} / {c:.2f}' for t, c in plain]}; "
        f"ours {[f'{t:.2f} / {c:.2f}' for t, c in ours]} (capture share {min(share):.0%}-{max(share):.0%}); "
        f"whole fit ratio (min / min) {ratio:.2f}x; tensors.safetensors byte-identical "
        f"(sha256 {organism['digest'][:16]}...)",
    )
    if _benchmarking_enabled(request.config):  # timings of a short run are only reported
        assert ratio >= 1.3


def _estimator_design(inputs, label_match):
    aligned: dict[int, list[torch.Tensor]] = {}
    for s in inputs.sequences:
        if s.label == 1:
            aligned.setdefault(s.group, []).append(s.token_ids)
    xs, ys = [], []
    for s in inputs.sequences:
        if s.label == 0 and s.features is not None and aligned.get(s.group):
            xs.append(s.features.float())
            ys.append(mai.token_labels(s.token_ids, aligned[s.group], label_match))
    return torch.cat(xs), torch.cat(ys).numpy()


def _unlimited_fit(x: torch.Tensor, y: np.ndarray, cfg, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The straightforward per-head loop, under the process's default thread pools."""
    coef, icpt = [], []
    for j in range(x.shape[1]):
        clf = LogisticRegression(C=cfg.C, max_iter=cfg.max_iter, random_state=seed)
        clf.fit(x[:, j].numpy(), y)
        coef.append(clf.coef_[0].astype(np.float32))
        icpt.append(np.float32(clf.intercept_[0]))
    return np.stack(coef), np.array(icpt)


def test_estimator_fit_with_and_without_the_pool_limit(request, organism, benchmark):
    inputs = organism["inputs"]
    est_cfg = organism["pipe"].estimator.config
    x, y = _estimator_design(inputs, est_cfg.label_match)
    rounds = 5 if _benchmarking_enabled(request.config) else 2
    limited, unlimited, fitted, plain = [], [], None, None
    for _ in range(rounds):  # interleaved, so both see the same load
        t = time.perf_counter()
        fitted = TokenMisalignmentEstimator(**est_cfg.model_dump()).fit(inputs)
        limited.append(time.perf_counter() - t)
        t = time.perf_counter()
        plain = _unlimited_fit(x, y, est_cfg, inputs.seed)
        unlimited.append(time.perf_counter() - t)
    np.testing.assert_array_equal(fitted.coef_.numpy(), plain[0])
    np.testing.assert_array_equal(fitted.intercept_.numpy(), plain[1])
    ratio = min(unlimited) / min(limited)
    _say(
        request.config,
        f"\nmai estimator fit on the organism ({len(y)} tokens, K = {x.shape[1]}, d = {x.shape[2]}): "
        f"default pools {_spread(unlimited)}; limited to one thread {_spread(limited)}; "
        f"ratio (min / min) {ratio:.1f}x; identical coefficients",
    )
    benchmark.extra_info["estimator_pool_limit_speedup"] = ratio
    benchmark.pedantic(lambda: TokenMisalignmentEstimator(**est_cfg.model_dump()).fit(inputs), rounds=1, iterations=1)
    if _benchmarking_enabled(request.config):  # timings of a short run are only reported
        assert ratio >= 2.0


def test_half_precision_lens_on_the_organism(request, organism):
    from tae_framework.organism import eval_items

    model, tok, world, data = organism["model"], organism["tok"], organism["world"], organism["data"]
    exact = organism["pipe"]
    half = AlignmentPipeline.from_preset("tae", estimator={"lens_dtype": "float16"}, **OVR).fit(model, tok, data)
    torch.testing.assert_close(half.estimator.coef_, exact.estimator.coef_, rtol=0, atol=0)
    prompts = [it["prompt"] for it in eval_items(world, ("deceptive",))[:96]]
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        with exact.apply(model, "all", record=True) as s_exact:
            model(**enc)
        with half.apply(model, "all", record=True) as s_half:
            model(**enc)
    mask = enc["attention_mask"].bool()
    gaps = [
        float((a[..., 0][mask] - b[..., 0][mask]).abs().max())
        for (_, _, a), (_, _, b) in zip(s_exact.context.signals, s_half.context.signals)
    ]
    gen_exact = exact.generate(model, tok, prompts, max_new_tokens=8, batch_size=64)
    gen_half = half.generate(model, tok, prompts, max_new_tokens=8, batch_size=64)
    same = sum(a == b for a, b in zip(gen_exact, gen_half)) / len(prompts)
    _say(
        request.config,
        f"\nhalf-precision lens on the organism: max |u_half - u_exact| per edited layer "
        f"{[f'{g:.1e}' for g in gaps]}; identical generations {same:.3f} of {len(prompts)}",
    )
    assert max(gaps) < 1e-3
    assert same >= 0.95
