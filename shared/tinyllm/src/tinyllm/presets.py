"""Named presets: a model shape plus how to train it (corpus, tokenizer size, schedule).

tiny   ~1M params, trains on a 2-core CPU in under 2 minutes: the model every CPU test and the
       server's default use
small  ~25M params, a minute on one GPU (about 4 epochs of the stdlib corpus; more overfits it)
base   ~110M params (GPT-2 small scale), the MFU benchmark
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tinyllm.config import ModelConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainConfig:
    corpus: str = "stdlib"
    corpus_bytes: int | None = None  # cap on the training text (validation gets a tenth)
    tokenizer_bytes: int = 8_000_000  # BPE merges are learned on this much of the training text
    vocab_size: int
    batch_size: int
    seq_len: int
    grad_accum: int = 1
    max_steps: int
    max_seconds: float | None = None  # stop early when the wall-clock budget is spent
    lr: float
    min_lr_ratio: float = 0.1
    warmup_steps: int
    weight_decay: float = 0.1
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int
    eval_batches: int = 20
    autocast_bf16: bool = True  # on CUDA only; the CPU trains in fp32
    compile: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "batch_size", "seq_len", "grad_accum", "max_steps", "eval_every", "eval_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_steps <= self.max_steps:
            raise ValueError(f"warmup_steps must be in [0, max_steps], got {self.warmup_steps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len * self.grad_accum


@dataclass(frozen=True, slots=True, kw_only=True)
class Preset:
    name: str
    model: ModelConfig  # vocab_size here equals train.vocab_size
    train: TrainConfig


def _preset(
    name: str, *, dim: int, n_layers: int, n_heads: int, n_kv_heads: int, ffn_dim: int, train: TrainConfig
) -> Preset:
    model = ModelConfig(
        vocab_size=train.vocab_size,
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        ffn_dim=ffn_dim,
        max_seq_len=max(1024, train.seq_len),
        rope_theta=10000.0,
        norm_eps=1e-5,
        tie_embeddings=True,
    )
    return Preset(name=name, model=model, train=train)


PRESETS = {
    "tiny": _preset(
        "tiny",
        dim=128,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        ffn_dim=352,
        train=TrainConfig(
            corpus_bytes=3_000_000,
            tokenizer_bytes=1_500_000,
            vocab_size=2048,
            batch_size=16,
            seq_len=128,
            max_steps=1000,
            max_seconds=90.0,
            lr=3e-3,
            warmup_steps=30,
            eval_every=200,
            eval_batches=16,
            autocast_bf16=False,
        ),
    ),
    "small": _preset(
        "small",
        dim=512,
        n_layers=8,
        n_heads=8,
        n_kv_heads=4,
        ffn_dim=1408,
        train=TrainConfig(
            vocab_size=8192,
            batch_size=32,
            seq_len=512,
            max_steps=700,
            lr=1.5e-3,
            warmup_steps=70,
            eval_every=100,
            compile=True,
        ),
    ),
    "base": _preset(
        "base",
        dim=768,
        n_layers=12,
        n_heads=12,
        n_kv_heads=4,
        ffn_dim=2304,
        train=TrainConfig(
            vocab_size=32000,
            batch_size=32,
            seq_len=1024,
            max_steps=600,
            lr=1e-3,
            warmup_steps=60,
            eval_every=200,
            compile=True,
        ),
    ),
}


def get_preset(name: str, **train_overrides) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    p = PRESETS[name]
    return replace(p, train=replace(p.train, **train_overrides)) if train_overrides else p
