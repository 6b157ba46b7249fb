"""Optional vLLM rollout backend (GPU only) behind the RolloutEngine interface.

vllm is imported only when an engine builds its own ``vllm.LLM`` (colocated, in-process), so
this module imports without it. Call :meth:`VLLMEngine.sync_weights` before each rollout to
copy the current policy (LoRA merged, plain Hugging Face names) into vLLM::

    engine = VLLMEngine(model, tokenizer, gpu_memory_utilization=0.3)
    engine.sync_weights()
    batch = engine.generate(prompts, G=8, max_new_tokens=256, temperature=1.0, generator_seed=3)
"""

from __future__ import annotations

import contextlib
import math
import os
import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .base import RolloutBatch, build_batch, check_settings, engine_eos_ids, tokenize_prompts

__all__ = ["VLLMEngine", "merged_state_items"]

INSTALL_HINT = "the vLLM rollout backend needs vllm (GPU only): pip install vllm"


def _import_vllm():
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from exc
    return vllm


@contextlib.contextmanager
def _preserved_rng():
    """Restore Python's, NumPy's and torch's global RNG states on exit (vLLM seeds them)."""
    py, npy = random.getstate(), np.random.get_state()  # noqa: NPY002 (global state)
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)  # noqa: NPY002


@contextlib.contextmanager
def _env_default(name: str, value: str):
    """Set ``os.environ[name]`` inside the block unless the user set it; undo it after."""
    ours = name not in os.environ
    if ours:
        os.environ[name] = value
    try:
        yield
    finally:
        if ours:
            os.environ.pop(name, None)


def merged_state_items(model) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` of the policy's weights under plain Hugging Face names.

    A plain model yields its ``state_dict()`` as is. A peft model is merged first
    (``merge_adapter()``), its entries renamed (``base_model.model.`` and ``.base_layer``
    removed, ``lora_*`` tensors skipped), and unmerged when the generator finishes or is
    closed; the adapted base weights are then restored bit for bit from a CPU copy, so repeated
    syncs never accumulate the rounding of ``W + BA - BA`` (visible in bfloat16).

    The tensors share storage with the live parameters: use (or clone) each one before the
    generator is exhausted -- after that they hold the unmerged values again.
    """
    if not callable(getattr(model, "merge_adapter", None)):
        yield from model.state_dict().items()
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    adapted = [m.get_base_layer().weight for m in model.modules() if isinstance(m, BaseTunerLayer)]
    saved = [w.detach().to("cpu", copy=True) for w in adapted]
    model.merge_adapter()
    try:
        for name, tensor in model.state_dict().items():
            if ".lora_" in name or "original_module" in name:
                continue
            name = name.removeprefix("base_model.model.").replace(".base_layer", "")
            yield name.replace("modules_to_save.default.", ""), tensor
    finally:
        model.unmerge_adapter()
        with torch.no_grad():
            for w, orig in zip(adapted, saved, strict=True):
                w.copy_(orig)


def _weight_loader(llm):
    """``load(items)`` that copies ``[(name, tensor)]`` into the vLLM model's weights.

    Uses ``LLM.apply_model`` (newer vLLM; a multiprocess engine pickles the function, which
    needs ``VLLM_ALLOW_INSECURE_SERIALIZATION=1``), else the older in-process attribute path
    ``llm.llm_engine.model_executor.driver_worker.model_runner.model`` (as TRL does).
    """
    if callable(getattr(llm, "apply_model", None)):
        return lambda items: llm.apply_model(lambda m: m.load_weights(items))
    try:
        model = llm.llm_engine.model_executor.driver_worker.model_runner.model
    except AttributeError:
        model = None
    if not callable(getattr(model, "load_weights", None)):
        raise RuntimeError(
            "cannot push weights into this vLLM engine: it has neither LLM.apply_model nor "
            "llm_engine.model_executor.driver_worker.model_runner.model.load_weights"
        )
    return model.load_weights


def _base_path(model) -> str:
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    path = getattr(base, "name_or_path", "") or getattr(base.config, "_name_or_path", "")
    if not path:
        raise ValueError("cannot tell which checkpoint the model came from (no name_or_path)")
    return str(path)


class VLLMEngine:
    """:class:`~grponorm.rl.rollout.RolloutEngine` sampling with vLLM (GPU only).

    Each prompt is sent once as its unpadded token ids with ``n=G``; vLLM shares the prompt's
    KV cache across the group. Prompt ``i``'s request gets seed ``(generator_seed * 7919 + i)
    * G`` and vLLM seeds its ``k``-th sample ``seed + k``, so no two samples of one call, nor
    of calls with other seeds (fewer than 7919 prompts), share a random stream. Greedy
    (``temperature == 0``) asks for one sample per prompt (vLLM refuses ``n > 1`` there) and
    repeats it G times. Results are reproducible on the same hardware and vLLM version; the
    caller's global RNG states are restored after each vLLM call.

    Log-probs: current vLLM (V1 engine) returns ``logprobs_mode="raw_logprobs"`` by default,
    the log-softmax of the model's raw logits before temperature, penalties and top-p -- the
    policy's log-prob at temperature 1 that ``RolloutBatch.logprobs`` promises (up to kernel
    and dtype differences from the trainer's forward pass). ``"processed_logprobs"`` (what TRL
    asks for) would give the sampling distribution's instead; an engine built here pins
    ``raw_logprobs``. Completions vLLM stopped at an eos carry that eos in ``token_ids`` (V1
    appends the token before checking the stop); should one lack it, it is appended (log-prob
    0) so masks match the other engines.

    Args:
        model: the trained policy (peft LoRA or plain); vLLM loads its base checkpoint.
        tokenizer: its tokenizer (with a pad token, as ``grponorm.rl.models`` loads it).
        llm: an existing ``vllm.LLM`` (or anything with its ``generate``); None builds one
            in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` unless set) so that
            :meth:`sync_weights` is an in-memory copy.
        gpu_memory_utilization, dtype, enable_prefix_caching: passed to ``vllm.LLM``.
        sampling_params_cls: stands in for ``vllm.SamplingParams`` (tests).

    Raises:
        ImportError: ``llm`` or ``sampling_params_cls`` not given and vllm is not installed.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        llm=None,
        gpu_memory_utilization: float = 0.3,
        dtype: str = "auto",
        enable_prefix_caching: bool = True,
        sampling_params_cls=None,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.eos_ids = engine_eos_ids(tokenizer, model)
        if llm is None or sampling_params_cls is None:
            vllm = _import_vllm()
            sampling_params_cls = sampling_params_cls or vllm.SamplingParams
        if llm is None:
            with _preserved_rng(), _env_default("VLLM_ENABLE_V1_MULTIPROCESSING", "0"):
                llm = vllm.LLM(
                    model=_base_path(model),
                    dtype=dtype,
                    gpu_memory_utilization=gpu_memory_utilization,
                    enable_prefix_caching=enable_prefix_caching,
                    logprobs_mode="raw_logprobs",
                )
        self.llm, self.sampling_params_cls = llm, sampling_params_cls

    def sync_weights(self) -> None:
        """Copy the current policy weights (LoRA merged) into vLLM; drop its prefix cache."""
        load = _weight_loader(self.llm)
        with torch.no_grad():
            for name, tensor in merged_state_items(self.model):
                load([(name, tensor)])  # one at a time, while the adapter is merged
        if callable(getattr(self.llm, "reset_prefix_cache", None)):
            self.llm.reset_prefix_cache()

    def generate(
        self,
        prompts: Sequence[str],
        G: int,
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        generator_seed: int = 0,
    ) -> RolloutBatch:
        """Sample ``G`` completions for every prompt (see :class:`RolloutEngine`)."""
        check_settings(prompts, G, max_new_tokens, temperature, top_p)
        ids, mask = tokenize_prompts(self.tokenizer, prompts, self.model)  # (n, P)
        greedy = temperature == 0
        requests = [{"prompt_token_ids": row[m.bool()].tolist()} for row, m in zip(ids, mask)]
        params = [
            self.sampling_params_cls(
                n=1 if greedy else G,
                temperature=float(temperature),
                top_p=1.0 if greedy else float(top_p),
                max_tokens=int(max_new_tokens),
                seed=(int(generator_seed) * 7919 + i) * G,
                logprobs=0,
                stop_token_ids=list(self.eos_ids),
                detokenize=False,
            )
            for i in range(len(prompts))
        ]
        with _preserved_rng():
            outputs = self.llm.generate(requests, params, use_tqdm=False)
        rows: list[tuple[list[int], list[float]]] = []
        for out in outputs:
            samples = sorted(out.outputs, key=lambda c: c.index)
            if len(samples) != params[0].n:
                raise RuntimeError(f"vLLM returned {len(samples)} completions, not {params[0].n}")
            rows.extend(self._row(c) for c in (samples * G if greedy else samples))
        width = max(len(toks) for toks, _ in rows)
        pad = self.tokenizer.pad_token_id
        completion = torch.tensor([t + [pad] * (width - len(t)) for t, _ in rows])  # (B, C)
        logprobs = torch.tensor([lp + [0.0] * (width - len(lp)) for _, lp in rows])  # (B, C)
        completion, logprobs = completion.to(ids.device), logprobs.to(ids.device, torch.float32)
        return build_batch(self.tokenizer, self.eos_ids, ids, mask, completion, G, logprobs)

    def _row(self, c) -> tuple[list[int], list[float]]:
        """Token ids and sampled-token log-probs of one vLLM ``CompletionOutput``."""
        toks = [int(t) for t in c.token_ids]
        lps = []
        for t, tok in enumerate(toks):
            entry = c.logprobs[t].get(tok) if c.logprobs and t < len(c.logprobs) else None
            value = getattr(entry, "logprob", None)
            lps.append(float(value) if value is not None and math.isfinite(value) else 0.0)
        if c.finish_reason == "stop" and (not toks or toks[-1] not in self.eos_ids):
            stop = c.stop_reason if isinstance(c.stop_reason, int) else self.eos_ids[0]
            toks, lps = toks + [int(stop)], lps + [0.0]
        return toks, lps
