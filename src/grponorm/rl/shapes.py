"""Shapes of random-weight models, and the FLOPs of a training step on them.

``--model random:<shape>`` (or ``random:<shape>@<seed>``) builds a causal LM of a known
architecture with freshly initialised, seeded weights: nothing is downloaded, so throughput at
the paper's scale can be measured where the Hugging Face hub is out of reach. Such a model
pairs with the *embedded tokenizer* (SmolLM2-135M-Instruct's, 49,152 ids, which all lie inside
Qwen's 151,936-id vocabulary) and **generates to a fixed length**: its EOS logits are masked, so
every completion has exactly ``max_new_tokens`` tokens (``grponorm.rl.models`` does the loading;
this module is plain data and arithmetic, importable without torch). Rewards on its random text
are ~0; it is for timing, not for learning.

:data:`SHAPES` holds the shapes. ``qwen2.5-math-1.5b`` is Qwen/Qwen2.5-Math-1.5B's own
``config.json`` (hidden 1536, 28 layers, 12 query / 2 KV heads, intermediate 8960, vocab 151936,
rope_theta 10000, 4096 positions, tied embeddings, RMSNorm eps 1e-6); ``qwen2.5-tiny`` is the
same architecture (Qwen2, GQA 6:1 like 12:2, tied embeddings, the full vocabulary) narrowed and
shallowed for CPU tests.

FLOP convention (:func:`step_flops`), the usual "model FLOPs" of MFU: 2 FLOPs per weight of a
matrix product per token, counted over ``N`` = the weights of every matrix product, the LM head
included and the input-embedding lookup (no arithmetic) excluded, which for a tied-embedding
model is its parameter count (biases and norms, < 0.1%, included for simplicity). Attention's
score and value products (``4 * layers * context * hidden`` per token, ~3% at 1.5B and ~700
tokens) and recomputation are not counted. Per step, with ``P`` the prompt tokens (each prompt
once: the work a group needs, however an implementation batches it) and ``C`` the completion
tokens:

- rollout: ``2 N (P + C)`` (prefill each prompt, one decode step per generated token);
- training pass over the same ``P + C`` tokens: forward ``2 N``, gradient w.r.t. activations
  ``2 N``, gradient w.r.t. trainable weights ``2 N_train``; LoRA adds its adapters' own
  ``N_lora`` to the forward and activation-gradient terms. Full fine-tuning is therefore the
  familiar ``6 N`` per trained token; LoRA is ``4 N + 6 N_lora`` (the frozen weights get no
  weight gradient), which is what LoRA changes.

MFU is these FLOPs over the step's wall time over the accelerator's peak (H200 dense bf16:
about 790 TFLOP/s as measured on this workplace's machines).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

__all__ = [
    "H200_BF16_TFLOPS",
    "RANDOM_PREFIX",
    "SHAPES",
    "RandomModel",
    "Shape",
    "is_random",
    "lora_parameter_count",
    "parse_random",
    "step_flops",
]

RANDOM_PREFIX = "random:"
#: Dense bf16 matrix-product peak of one H200 (TFLOP/s), the MFU denominator of the device check.
H200_BF16_TFLOPS = 790.0


@dataclass(frozen=True)
class Shape:
    """The architecture of a Qwen2 causal LM: the ``config.json`` fields that fix its size."""

    name: str  # registry key (the part after "random:")
    source: str  # where the values come from
    hidden_size: int  # width of the residual stream
    num_hidden_layers: int  # decoder layers
    num_attention_heads: int  # query heads (head_dim = hidden_size / num_attention_heads)
    num_key_value_heads: int  # key/value heads (grouped-query attention)
    intermediate_size: int  # width of the SwiGLU MLP
    vocab_size: int  # rows of the embedding / LM head
    max_position_embeddings: int  # longest sequence the rotary embedding is set up for
    rope_theta: float  # rotary embedding base
    rms_norm_eps: float  # RMSNorm epsilon
    tie_word_embeddings: bool  # LM head shares the input embedding's weight
    max_window_layers: int  # Qwen2 config field (inactive: no sliding window)
    hidden_act: str = "silu"  # MLP activation
    initializer_range: float = 0.02  # std of the normal weight init

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    def hf_config(self) -> dict:
        """``transformers.Qwen2Config`` keyword arguments of this shape (no sliding window,
        no dropout; token ids are set by the loader from the tokenizer)."""
        d = asdict(self)
        d.pop("name")
        d.pop("source")
        return dict(d, model_type="qwen2", architectures=["Qwen2ForCausalLM"],
                    use_sliding_window=False, sliding_window=None, attention_dropout=0.0)

    def parameter_count(self) -> int:
        """Parameters of the model (a tied embedding counted once), from the shape alone."""
        h, kv = self.hidden_size, self.num_key_value_heads * self.head_dim
        attn = (h * h + h) + 2 * (h * kv + kv) + h * h  # q, k, v with bias; o without
        mlp = 3 * h * self.intermediate_size  # gate, up, down
        layer = attn + mlp + 2 * h  # two RMSNorms
        embed = self.vocab_size * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return embed + self.num_hidden_layers * layer + h + head

    def matmul_parameter_count(self) -> int:
        """``N`` of the FLOP convention: the parameters minus the input-embedding table, plus
        the LM head's matrix (for a tied model: the parameter count itself)."""
        n = self.parameter_count()
        return n if self.tie_word_embeddings else n - self.vocab_size * self.hidden_size


#: Qwen/Qwen2.5-Math-1.5B's shape (its config.json).
QWEN25_MATH_15B = Shape(
    name="qwen2.5-math-1.5b", source="Qwen/Qwen2.5-Math-1.5B config.json",
    hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
    intermediate_size=8960, vocab_size=151936, max_position_embeddings=4096,
    rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, max_window_layers=21)
#: The shapes ``random:<name>`` knows; the tiny one narrows the paper shape for CPU tests.
SHAPES: dict[str, Shape] = {s.name: s for s in (
    QWEN25_MATH_15B,
    replace(QWEN25_MATH_15B, name="qwen2.5-tiny",
            source="qwen2.5-math-1.5b's architecture, narrowed for CPU tests", hidden_size=96,
            num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=1,
            intermediate_size=256, max_window_layers=2),
)}


@dataclass(frozen=True)
class RandomModel:
    """A parsed ``random:<shape>[@<seed>]`` model name."""

    shape: Shape  # the architecture
    seed: int  # seed of the weight init (torch RNG of the device the model is built on)
    eos: bool = False  # False: EOS logits masked, completions run to max_new_tokens


def is_random(name: str) -> bool:
    """True for a ``random:...`` model name."""
    return str(name).startswith(RANDOM_PREFIX)


def parse_random(name: str) -> RandomModel:
    """``"random:qwen2.5-tiny@3"`` -> ``RandomModel(SHAPES["qwen2.5-tiny"], seed=3)`` (seed 0
    when none is given).

    Raises:
        ValueError: not a ``random:`` name, an unknown shape (the known ones are listed), or a
            seed that is not a non-negative integer.
    """
    name = str(name)
    if not is_random(name):
        raise ValueError(f"{name!r} is not a random-model name ({RANDOM_PREFIX}<shape>[@seed])")
    body = name[len(RANDOM_PREFIX):]
    shape_name, _, seed_text = body.partition("@")
    if shape_name not in SHAPES:
        raise ValueError(f"unknown random-model shape {shape_name!r} in {name!r}; known: "
                         + ", ".join(f"{RANDOM_PREFIX}{k}" for k in SHAPES))
    seed = 0
    if seed_text or body.endswith("@"):
        if not seed_text.isdigit():
            raise ValueError(f"seed {seed_text!r} in {name!r} is not a non-negative integer "
                             f"({RANDOM_PREFIX}<shape>@<seed>)")
        seed = int(seed_text)
    return RandomModel(SHAPES[shape_name], seed)


def lora_parameter_count(shape: Shape, r: int, targets) -> int:
    """Parameters of rank-``r`` LoRA adapters (A: r x in, B: out x r) on ``targets`` of every
    layer (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)."""
    h, i = shape.hidden_size, shape.intermediate_size
    kv = shape.num_key_value_heads * shape.head_dim
    dims = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    unknown = [t for t in targets if t not in dims]
    if unknown:
        raise ValueError(f"LoRA targets {unknown} are not matrices of a Qwen2 layer; "
                         f"known: {', '.join(dims)}")
    return shape.num_hidden_layers * sum(r * (dims[t][0] + dims[t][1]) for t in targets)


def step_flops(n: int, prompt_tokens: int, completion_tokens: int, *, n_lora: int = 0) -> dict:
    """Model FLOPs of one GRPO step under the module's convention.

    Args:
        n: ``N``, the matrix-product weights (:meth:`Shape.matmul_parameter_count`).
        prompt_tokens: prompt tokens of the step, each prompt counted once (not G times).
        completion_tokens: completion tokens generated in the step (all rows).
        n_lora: LoRA adapter parameters (0 = full fine-tuning: every weight trains).

    Returns:
        ``{"rollout", "train", "total"}`` in FLOPs.
    """
    if min(n, prompt_tokens, completion_tokens, n_lora) < 0:
        raise ValueError("parameter and token counts must be >= 0")
    tokens = prompt_tokens + completion_tokens
    rollout = 2 * (n + n_lora) * tokens
    n_train = n_lora if n_lora else n
    train = (4 * (n + n_lora) + 2 * n_train) * tokens
    return {"rollout": float(rollout), "train": float(train), "total": float(rollout + train)}
