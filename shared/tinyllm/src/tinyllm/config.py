"""Model configuration: the Llama architecture's hyperparameters, and their Hugging Face names.

One frozen dataclass describes every model the repo runs, from the 1M-parameter `tiny` preset to a
Llama 3.2 checkpoint on disk. `from_hf` / `to_hf` map it onto transformers' LlamaConfig keys
(config.json), so a directory written by either side is read by the other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

HF_ROPE_TYPES = ("default", "llama3")


@dataclass(frozen=True, slots=True, kw_only=True)
class RopeScaling:
    """Llama 3.x frequency-dependent RoPE scaling (rope_type "llama3" in config.json)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelConfig:
    vocab_size: int
    dim: int  # hidden_size
    n_layers: int
    n_heads: int
    n_kv_heads: int  # < n_heads: grouped-query attention; 1: multi-query
    ffn_dim: int  # intermediate_size of the SwiGLU MLP
    max_seq_len: int = 2048  # max_position_embeddings
    head_dim: int | None = None  # None: dim // n_heads
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    extra_hf: dict[str, Any] = field(default_factory=dict)  # config.json keys we carry through unread

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.head_dim is None and self.dim % self.n_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads}), or set head_dim")
        if self.hd % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.hd}")

    @property
    def hd(self) -> int:
        """The per-head dimension."""
        return self.head_dim if self.head_dim is not None else self.dim // self.n_heads

    def num_params(self, *, embeddings: bool = True) -> int:
        """Parameter count from the shapes (equal to sum(p.numel()) of the built model)."""
        attn = self.dim * self.hd * (2 * self.n_heads + 2 * self.n_kv_heads)
        mlp = 3 * self.dim * self.ffn_dim
        per_layer = attn + mlp + 2 * self.dim
        emb = self.vocab_size * self.dim * (1 if self.tie_embeddings else 2)
        return self.n_layers * per_layer + self.dim + (emb if embeddings else 0)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward = 3x forward): 6N for the matmuls over the
        non-embedding weights plus the LM head, and 12 * L * T * d_attn for attention scores and values
        (the PaLM appendix B formula, with causal attention counted in full as is customary)."""
        n = self.num_params(embeddings=False) + self.vocab_size * self.dim
        return 6 * n + 12 * self.n_layers * seq_len * self.n_heads * self.hd

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """K and V for one token across every layer."""
        return 2 * self.n_layers * self.n_kv_heads * self.hd * dtype_bytes

    # ---- Hugging Face config.json ---------------------------------------------------------------

    @staticmethod
    def from_hf(d: dict[str, Any]) -> ModelConfig:
        arch = d.get("model_type")
        if arch not in ("llama", None):
            raise ValueError(f"config.json: model_type {arch!r} is not a Llama-architecture model")
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"config.json: hidden_act {d['hidden_act']!r} is not supported (Llama uses 'silu')")
        for key in ("attention_bias", "mlp_bias"):
            if d.get(key):
                raise ValueError(f"config.json: {key}=true is not supported")
        # transformers >= 5 writes rope_parameters {rope_type, rope_theta, ...}; older files rope_theta + rope_scaling
        params = d.get("rope_parameters") or {}
        theta = params.get("rope_theta", d.get("rope_theta", 10000.0))
        scaling = d.get("rope_scaling") or (params if params.get("rope_type", "default") != "default" else None)
        rope = None
        if scaling:
            kind = scaling.get("rope_type", scaling.get("type"))
            if kind not in HF_ROPE_TYPES:
                raise ValueError(f"config.json: rope_scaling type {kind!r} is not supported ({HF_ROPE_TYPES})")
            if kind == "llama3":
                rope = RopeScaling(
                    factor=float(scaling["factor"]),
                    low_freq_factor=float(scaling["low_freq_factor"]),
                    high_freq_factor=float(scaling["high_freq_factor"]),
                    original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
                )
        try:
            n_heads = int(d["num_attention_heads"])
            return ModelConfig(
                vocab_size=int(d["vocab_size"]),
                dim=int(d["hidden_size"]),
                n_layers=int(d["num_hidden_layers"]),
                n_heads=n_heads,
                n_kv_heads=int(d.get("num_key_value_heads") or n_heads),
                ffn_dim=int(d["intermediate_size"]),
                max_seq_len=int(d.get("max_position_embeddings", 2048)),
                head_dim=d.get("head_dim"),
                rope_theta=float(theta),
                rope_scaling=rope,
                norm_eps=float(d.get("rms_norm_eps", 1e-6)),
                tie_embeddings=bool(d.get("tie_word_embeddings", False)),
                bos_token_id=d.get("bos_token_id"),
                eos_token_id=d.get("eos_token_id"),
                pad_token_id=d.get("pad_token_id"),
                extra_hf={k: v for k, v in d.items() if k in ("torch_dtype", "dtype", "transformers_version")},
            )
        except KeyError as e:
            raise ValueError(f"config.json: missing key {e.args[0]!r}") from None

    def to_hf(self, dtype: str = "float32") -> dict[str, Any]:
        d: dict[str, Any] = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.dim,
            "intermediate_size": self.ffn_dim,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.hd,
            "max_position_embeddings": self.max_seq_len,
            "rope_theta": self.rope_theta,
            "rope_scaling": None,
            "rms_norm_eps": self.norm_eps,
            "tie_word_embeddings": self.tie_embeddings,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": dtype,
        }
        # both spellings, so transformers 4.x (rope_theta, rope_scaling) and 5.x (rope_parameters) read it
        d["rope_parameters"] = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling:
            d["rope_scaling"] = {"rope_type": "llama3", **asdict(self.rope_scaling)}
            d["rope_parameters"] = {**d["rope_scaling"], "rope_theta": self.rope_theta}
        return d
