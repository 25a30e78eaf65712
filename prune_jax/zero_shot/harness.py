"""lm-evaluation-harness adapter: our JAX LLaMA as the harness model ``prune-jax``.

Install the extra (``pip install -e '.[harness]'``: lm_eval's core install, no torch),
then either

    prune-jax-lm-eval --model prune-jax --model_args pretrained=DIR_OR_GGUF,dtype=bfloat16 \\
        --tasks boolq,piqa,hellaswag,winogrande,arc_easy,arc_challenge,openbookqa

(the harness's own command line, run after this module registered the model: the bare
``lm_eval`` command has no plugin mechanism), or from Python ``import
prune_jax.zero_shot.harness`` and ``lm_eval.simple_evaluate(model="prune-jax", ...)``.

``pretrained`` is anything ``load_model`` reads: "smollm2-135m", an HF directory, a GGUF
file, or a directory ``prune-jax prune`` wrote, including per-layer widths that stock
transformers cannot load (the reason this adapter exists). Text is encoded by the
harness's own ``TemplateLM`` (trailing-space move, pair split) with our tokenizer exactly
as its ``hf`` model encodes it; the scoring is ``prune_jax.zero_shot.requests``.
"""

from __future__ import annotations

from typing import Any

import lm_eval.models  # noqa: F401  (the harness's own models register on this import, and only while the registry is empty)
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from prune_jax.zero_shot.requests import (
    BATCH_TOKENS,
    generate_greedy_tokens,
    loglikelihood_rolling_tokens,
    loglikelihood_tokens,
)
from skmm_jax.common.cli import progress_bar

HARNESS_OPTIONS = ("batch_size", "max_batch_size", "device")  # what the harness passes to every model (batching is ours)


class ModelArgsError(ValueError):
    """A bad ``--model_args`` value: ``prune-jax-lm-eval`` prints it as one line (exit 2)."""


@register_model("prune-jax", "prune_jax")
class PruneJaxLM(TemplateLM):
    """The harness's ``LM`` interface over a ``prune_jax`` LLaMA (see module docstring).

    model_args: ``pretrained`` (required), ``dtype`` (float32 | bfloat16), ``tokenizer``
    (a directory or GGUF, when the model has none), ``max_length`` (window, default the
    model's context), ``batch_tokens`` (≈ tokens per forward batch), ``max_gen_toks``
    (default generation budget), ``attention`` (chunked | dot_product).
    """

    def __init__(
        self,
        pretrained: str = "smollm2-135m",
        dtype: str = "float32",
        tokenizer: str | None = None,
        max_length: int | None = None,
        batch_tokens: int = BATCH_TOKENS,
        max_gen_toks: int = 256,
        attention: str = "chunked",
        **harness_options: Any,  # batch_size, max_batch_size, device: passed by the harness to every model
    ) -> None:
        super().__init__()
        from prune_jax.models.llama import load_model, load_tokenizer, set_attention
        from prune_jax.models.llama.checkpoint import check_tokenizer

        unknown = sorted(set(harness_options) - set(HARNESS_OPTIONS))
        if unknown:  # a typo (dtpye=...) must not silently fall back to a default
            raise ModelArgsError(f"--model_args: unknown argument(s) {', '.join(unknown)}; prune-jax takes pretrained, dtype, "
                                 "tokenizer, max_length, batch_tokens, max_gen_toks, attention")
        try:
            self.model, self.tokenizer = load_model(pretrained, dtype=dtype)
            set_attention(self.model, attention)
            if tokenizer is not None:
                self.tokenizer = load_tokenizer(tokenizer)
            if self.tokenizer is None:
                raise ValueError(f"{pretrained} has no tokenizer files; pass tokenizer=DIR in --model_args")
            check_tokenizer(self.model, self.tokenizer)
            self._max_length = int(max_length) if max_length is not None else self.model.config.max_position_embeddings
            self.model.config.check_sequence_length(self._max_length, name="max_length")
            self.batch_tokens, self.max_gen_toks = int(batch_tokens), int(max_gen_toks)
        except (ValueError, FileNotFoundError, TypeError) as err:
            raise ModelArgsError(f"--model_args: {err}") from None

    # -- what TemplateLM asks of a model
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """BOS, else EOS: what an empty context and the first rolling window condition on."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", "prune-jax").replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """The tokenizer's own special-token default unless told (as the harness's ``hf``)."""
        options = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        return list(self.tokenizer.encode(string, **options))

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        with progress_bar("prune-jax loglikelihood", total=len(requests), disable=disable_tqdm) as progress:
            results = loglikelihood_tokens(self.model, [(context, continuation) for _, context, continuation in requests],
                                           max_length=self.max_length, batch_tokens=self.batch_tokens, progress=progress)
        for (key, _, _), result in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        documents = [self.tok_encode(request.args[0]) for request in requests]
        with progress_bar("prune-jax loglikelihood_rolling", total=len(documents), disable=disable_tqdm) as progress:
            totals = loglikelihood_rolling_tokens(self.model, documents, prefix_token=self.prefix_token_id,
                                                  max_length=self.max_length, batch_tokens=self.batch_tokens)
            progress(len(documents), len(documents))
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (request.args[0],), total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy only (zero-shot tasks decode greedily; sampling options are refused).
        Requests with the same token budget decode as one batch (``generate_greedy_tokens``
        with a KV cache), each row with its own stop strings."""
        parsed = [self._generation_request(request) for request in requests]  # refuses bad options before any work
        by_budget: dict[int, list[int]] = {}
        for index, (_, _, budget) in enumerate(parsed):
            by_budget.setdefault(budget, []).append(index)
        texts: list[str] = [""] * len(requests)
        with progress_bar("prune-jax generate_until", total=len(requests), disable=disable_tqdm) as progress:
            done = 0
            for budget, indices in by_budget.items():
                stops = [parsed[i][1] for i in indices]

                def stopped(row: int, new: list[int], stops=stops) -> bool:
                    text = self.tok_decode(new)
                    return any(s and s in text for s in stops[row])

                generated = generate_greedy_tokens(self.model, [parsed[i][0] for i in indices], max_new_tokens=budget,
                                                   stop=stopped, eos_token=self.eot_token_id, max_length=self.max_length,
                                                   batch_tokens=self.batch_tokens)
                for i, tokens in zip(indices, generated):
                    text = self.tok_decode(tokens)
                    for s in parsed[i][1]:
                        if s:
                            text = text.split(s)[0]
                    texts[i] = text
                    self.cache_hook.add_partial("generate_until", (requests[i].args[0], requests[i].args[1]), text)
                done += len(indices)
                progress(done, len(requests))
        return texts

    def _generation_request(self, request) -> tuple[list[int], list[str], int]:
        """(context ids, stop strings (EOS's text added), token budget) of one request."""
        context, options = request.args
        options = dict(options or {})
        if options.get("do_sample") or options.get("temperature", 0.0) not in (0, 0.0):
            raise ValueError("prune-jax generates greedily; do_sample / temperature > 0 are not supported")
        until = options.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        eos_text = self.tok_decode([self.eot_token_id]) if self.eot_token_id is not None else None
        if eos_text and eos_text not in until:
            until.append(eos_text)
        budget = int(options.get("max_gen_toks", self.max_gen_toks))
        return (self.tok_encode(context) if context else [self.prefix_token_id]), until, budget


def main() -> None:
    """``prune-jax-lm-eval``: the harness's command line with ``prune-jax`` registered."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    try:
        cli_evaluate()
    except ModelArgsError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
