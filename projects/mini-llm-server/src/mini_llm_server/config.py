"""The engine's configuration: one frozen dataclass, passed down explicitly."""

from __future__ import annotations

from dataclasses import dataclass

POLICIES = ("continuous", "static", "fifo")
ATTENTION_BACKENDS = ("auto", "triton", "torch")


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineConfig:
    block_size: int = 16  # tokens per KV block
    num_blocks: int | None = None  # the KV pool's size in blocks; None: from kv_cache_bytes / memory fraction
    kv_cache_bytes: int | None = None  # the pool's budget in bytes (the CPU default: 256 MiB)
    gpu_memory_fraction: float = 0.9  # on a GPU with neither set: this fraction of free memory, after weights
    max_num_seqs: int = 64  # sequences in the running batch at most
    # tokens computed per step at most (the chunked-prefill budget). Every stream waits for a step that carries
    # prompt tokens, so this bounds the inter-token tail. In eleven H200 runs (at 71e8ae5, 40aff69, e918e47,
    # 2263454, 52c90c2, 4828595, 45c7312, d97b9ec, cbf2921, 61534e0, e0875c7) 32 streams had a p95 gap of
    # 2.01-2.18 ms with 256 against 2.38-2.53 with 512. At 128 streams neither budget streamed faster in every run:
    # while the engine process's host set the pace, 256 kept 512's throughput in the first three, led by 11% in the
    # fourth and trailed by 13% in the fifth; in the sixth and seventh, the GPU 98-99.5% busy at both, it trailed by
    # 3%; in the eighth it led by 11%, the GPU 88% busy with 512; in the ninth it trailed by 6%, the GPU 99% busy at
    # both; in the tenth and eleventh it led by 2% and 5%, the GPU 96% and 92% busy with 512
    # (results/h200/serving.json and its history in git; earlier/serving_71e8ae5_budget_512.json,
    # earlier/serving_52c90c2.json, earlier/serving_4828595.json, earlier/serving_45c7312.json,
    # earlier/serving_d97b9ec.json, earlier/serving_cbf2921.json, earlier/serving_61534e0.json). What smaller
    # budgets cost at 128 streams: see max_prefill_tokens below
    max_num_batched_tokens: int = 256
    # tokens of sequences catching up (prompt chunks, recomputation after a preemption) per step at most, on top of
    # which the running streams' decodes take what is left of max_num_batched_tokens; None: only that budget bounds
    # them. A budget that counts decodes gives prompts less room the more streams decode (at 128 streams and a
    # 128-token budget, none), while this cap bounds a prompt-carrying step at any load. Not the default: on the
    # H200 at 740828d (results/h200/goal_runs_machine3.json) a 96-token cap within 256 met the 32-stream goal in
    # 10 of 12 runs (256 uncapped: 12 of 12) and streamed 27% fewer tokens/s at 128 streams (a 128-token budget:
    # 32% fewer), its seats refilling slowly (p99 TTFT 418 and 434 ms against 219)
    max_prefill_tokens: int | None = None
    # continuous batching: while sequences decode, wait until this many waiting requests (or all there are)
    # can be admitted together; 1 admits as soon as a seat frees. Trades a little TTFT for fewer steps that
    # mix prompts into the decode batch (each a little longer than a decode-only step).
    min_admission: int = 1
    enable_prefix_caching: bool = True
    policy: str = "continuous"  # "continuous" (iteration-level), "static" (batch to completion), "fifo" (one)
    # decode attention: "triton" (the paged kernel), "torch" (gather + SDPA), "auto" (triton on CUDA)
    attention_backend: str = "auto"
    # on CUDA with the triton backend: decode-only steps replay CUDA graphs captured at start-up for padded
    # batch sizes up to max_num_seqs (cuda_graphs.py); False runs every step eagerly
    cuda_graphs: bool = True
    # A step whose sampling is all greedy takes its argmax on the device and is read back only after the next
    # step has been launched, whose forward takes those tokens from the device: the host's per-step work
    # (scheduling, inputs, reading outputs) overlaps the GPU's instead of leaving it idle. Outputs arrive one
    # step() call later; a step that samples otherwise is read at once.
    overlap_steps: bool = True
    # on CUDA: two events per step give each kind of step's GPU busy time and the GPU's idle time before it,
    # waiting for the host (gpu_timeline.py; the gpu_* metrics), for two event records and a query per step
    gpu_timeline: bool = False

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {self.num_blocks}")
        if self.kv_cache_bytes is not None and self.kv_cache_bytes < 1:
            raise ValueError(f"kv_cache_bytes must be positive, got {self.kv_cache_bytes}")
        if not 0.0 < self.gpu_memory_fraction <= 1.0:
            raise ValueError(f"gpu_memory_fraction must be in (0, 1], got {self.gpu_memory_fraction}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if not 1 <= self.min_admission <= self.max_num_seqs:
            raise ValueError(
                f"min_admission must be in [1, max_num_seqs={self.max_num_seqs}], got {self.min_admission}"
            )
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        if self.max_prefill_tokens is not None and self.max_prefill_tokens < 1:
            raise ValueError(f"max_prefill_tokens must be >= 1 or None, got {self.max_prefill_tokens}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"attention_backend must be one of {', '.join(ATTENTION_BACKENDS)}, got {self.attention_backend!r}"
            )
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
