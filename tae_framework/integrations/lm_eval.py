"""Run any lm-evaluation-harness task with a fitted pipeline's edits installed.

Importing this module registers the lm-eval model name ``tae``: Hugging Face's
``hf`` model (:class:`lm_eval.models.huggingface.HFLM`) with the edits of a saved
pipeline installed around every model call, so MMLU, HellaSwag and the other
harness tasks become side-effect checks of an edit::

    import lm_eval
    import tae_framework.integrations.lm_eval  # registers "tae"

    results = lm_eval.simple_evaluate(
        model="tae",
        model_args={"pretrained": "path/or/hub-id", "pipeline": "runs/tae-fitted"},
        tasks=["mmlu"],
    )

From the shell, ``python -m tae_framework.integrations.lm_eval`` is lm-eval's own
command line with ``tae`` registered (``--model tae --model_args
pretrained=...,pipeline=...``).

Where the edits go (``scope``):

* ``"scored"`` (default): log-likelihood requests edit exactly the positions whose
  outputs predict the continuation's tokens (the last context token and the
  continuation's own tokens), which is what the model computes when it generates
  that continuation with the edits on (``AlignmentPipeline.generate`` edits the last
  position of every step). Context positions before that are not edited.
* ``"all"``: every position of every forward pass.

Generation requests (``generate_until``) always edit the last position of every step,
as :meth:`~tae_framework.AlignmentPipeline.generate` does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from .._log import get_logger
from ..errors import ConfigError, TAEError

try:
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "tae_framework.integrations.lm_eval needs lm-evaluation-harness with its Hugging Face "
        'backend: pip install "tae-framework[lm-eval]" (or pip install "lm-eval[hf]")'
    ) from exc

if TYPE_CHECKING:
    from ..pipeline import AlignmentPipeline

__all__ = ["MODEL_NAME", "SCOPES", "TAELM", "main"]

log = get_logger(__name__)

#: The lm-eval model name this module registers.
MODEL_NAME = "tae"
#: Accepted values of the ``scope`` model argument.
SCOPES = ("scored", "all")


def _digest(tokens: Sequence[int]) -> bytes:
    data = torch.as_tensor(list(tokens), dtype=torch.int64).numpy().tobytes()
    return hashlib.blake2b(data, digest_size=16).digest()


@register_model(MODEL_NAME)
class TAELM(HFLM):
    """lm-eval's Hugging Face model with a fitted pipeline's edits installed.

    Args:
        pretrained: the model (hub id, local folder or a loaded ``PreTrainedModel``);
            the one the pipeline was fitted on (checked by its fingerprint).
        pipeline: a folder written by :meth:`AlignmentPipeline.save
            <tae_framework.AlignmentPipeline.save>`, or a fitted pipeline object.
        scope: ``"scored"`` or ``"all"`` (see the module docs).
        **kwargs: everything else is :class:`~lm_eval.models.huggingface.HFLM`'s
            (``tokenizer``, ``device``, ``dtype``, ``batch_size``, ...).
    """

    def __init__(
        self,
        pretrained: Any = None,
        pipeline: str | Path | AlignmentPipeline | None = None,
        scope: Literal["scored", "all"] = "scored",
        **kwargs: Any,
    ) -> None:
        if pretrained is None:
            raise ConfigError(
                "the 'tae' lm-eval model needs the model: model_args pretrained=<hub id or folder>"
            )
        if pipeline is None or pipeline == "":
            raise ConfigError(
                "the 'tae' lm-eval model needs a fitted pipeline: model_args "
                "pipeline=<folder written by AlignmentPipeline.save or tae fit>; for the "
                "unedited model use lm-eval's 'hf' model"
            )
        if scope not in SCOPES:
            raise ConfigError(f"scope={scope!r} is not one of {', '.join(SCOPES)}")
        if kwargs.get("backend", "default") not in ("default", "causal"):
            raise ConfigError("the 'tae' lm-eval model edits causal LMs only: drop backend=seq2seq")
        self.tae_pipeline = self._load_pipeline(pipeline)
        self.tae_scope = scope
        self._contlens: dict[bytes, int] | None = None
        super().__init__(pretrained=pretrained, **kwargs)
        if self.backend != "causal":
            raise ConfigError(f"the 'tae' lm-eval model edits causal LMs only, got a {self.backend} model")
        with self.tae_pipeline.apply(self.model, "last"):  # fails now if the model differs
            pass
        log.info("lm-eval: edits of %s installed (scope %s)", pipeline, scope)

    @staticmethod
    def _load_pipeline(pipeline: Any) -> AlignmentPipeline:
        from ..pipeline import AlignmentPipeline

        if isinstance(pipeline, AlignmentPipeline):
            if not pipeline.is_fitted:
                raise ConfigError("the pipeline passed to the 'tae' lm-eval model is not fitted")
            return pipeline
        if isinstance(pipeline, (str, Path)):
            return AlignmentPipeline.load(pipeline)
        raise ConfigError(
            f"pipeline must be a folder of a saved pipeline or an AlignmentPipeline, got "
            f"{type(pipeline).__name__}"
        )

    # -- log-likelihood ---------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        # Remember, per model input, how many of its last positions predict the
        # continuation: HFLM feeds (context + continuation)[-(max_length + 1):][:-1].
        contlens: dict[bytes, int] = {}
        for _, context_enc, continuation_enc in requests:
            inp = (list(context_enc) + list(continuation_enc))[-(self.max_length + 1) :][:-1]
            key = _digest(inp)
            contlens[key] = max(contlens.get(key, 0), len(continuation_enc))
        self._contlens = contlens
        try:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        finally:
            self._contlens = None

    def _scored_span(self, inps: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` mask of the positions that predict each row's continuation."""
        assert self._contlens is not None
        span = torch.zeros(inps.shape, dtype=torch.bool)
        width = inps.shape[1]
        for r, row in enumerate(inps.tolist()):
            end = width
            while end > 1 and row[end - 1] == 0:  # right padding is token id 0
                end -= 1
            for length in range(end, width + 1):  # the row may really end in id-0 tokens
                contlen = self._contlens.get(_digest(row[:length]))
                if contlen is not None:
                    span[r, length - contlen : length] = True
                    break
            else:
                raise TAEError(
                    "the 'tae' lm-eval model could not match a batch row to its request, so it "
                    "cannot tell which positions to edit (this lm-eval version may build its "
                    "inputs differently); use model_args scope=all to edit every position"
                )
        return span.to(inps.device)

    def _detect_batch_size(self, requests=None, pos: int = 0):
        # batch_size=auto probes memory with dummy batches: edit every position (the most
        # work an edit adds), since the dummies match no request
        saved, self._contlens = self._contlens, None
        try:
            return super()._detect_batch_size(requests, pos)
        finally:
            self._contlens = saved

    def _model_call(self, inps: torch.Tensor, attn_mask=None, labels=None) -> torch.Tensor:
        if self.tae_scope == "scored" and self._contlens is not None:
            session = self.tae_pipeline.apply(self.model, "span", span=self._scored_span(inps))
        else:  # scope=all, or a call outside scoring (lm-eval's batch-size probe)
            session = self.tae_pipeline.apply(self.model, "all")
        with session:
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)

    # -- generation -------------------------------------------------------------------
    def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs):
        with self.tae_pipeline.apply(self.model, "last"):
            return super()._model_generate(context, max_length, stop, **generation_kwargs)


def main() -> None:
    """lm-eval's command line with the ``tae`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
