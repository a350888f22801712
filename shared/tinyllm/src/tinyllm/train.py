"""One-device training: AdamW, linear warm-up then cosine decay, gradient clipping and accumulation,
bf16 autocast on CUDA, optional torch.compile, periodic validation perplexity, save and resume.

A checkpoint directory is a Hugging Face model directory plus trainer_state.pt (optimizer, step) and
training.json (the loss history), so a half-trained model is also a loadable model.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from tinyllm.checkpoint import load_model, load_tokenizer, save_model
from tinyllm.corpus import Corpus, load_corpus
from tinyllm.data import TokenData, eval_batches, random_batch, unigram_perplexity
from tinyllm.model import Transformer
from tinyllm.presets import Preset
from tinyllm.tokenizer import Tokenizer

WARMUP_STEPS_EXCLUDED = 5  # steps left out of the throughput figure: compilation, autotuning, allocator growth


@dataclass(slots=True)
class TrainResult:
    preset: str
    device: str
    num_params: int
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    tokens_per_s: float = 0.0  # steady state, after WARMUP_STEPS_EXCLUDED steps
    flops_per_token: float = 0.0
    unigram_ppl: float = 0.0
    train_loss: list[tuple[int, float]] = field(default_factory=list)
    val: list[tuple[int, float]] = field(default_factory=list)  # (step, perplexity)
    peak_memory_bytes: int | None = None

    @property
    def val_ppl(self) -> float:
        return self.val[-1][1]


def lr_at(step: int, cfg) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.lr * min_lr_ratio at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _text_chunks(text: str, size: int = 10_000):
    for i in range(0, len(text), size):
        yield text[i : i + size]


def _optimizer(model: Transformer, cfg, device: torch.device) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]  # matrices and embeddings; norms are not decayed
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2), fused=device.type == "cuda")


def _loss(model: Transformer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)  # (B, T, V)
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())


@torch.no_grad()
def evaluate(model: Transformer, batches, device: torch.device, autocast: bool) -> float:
    """Mean next-token cross-entropy over fixed validation batches (nats)."""
    model.eval()
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    total = 0.0
    with ctx:
        for x, y in batches:
            total += _loss(model, x.to(device), y.to(device)).item()
    model.train()
    return total / len(batches)


def preset_tokenizer(preset: Preset, corpus: Corpus | None = None) -> Tokenizer:
    """The tokenizer `train` trains for a preset: the same leading bytes of the same corpus (loaded here when
    not given), without training a model."""
    cfg = preset.train
    if corpus is None:
        corpus = load_corpus(cfg.corpus, max_bytes=cfg.corpus_bytes)
    return Tokenizer.train(_text_chunks(corpus.train[: cfg.tokenizer_bytes]), cfg.vocab_size)


def train(
    preset: Preset,
    out_dir: Path | None,
    device: torch.device,
    *,
    resume: bool = False,
    progress: bool = True,
    log=print,
) -> tuple[Transformer, Tokenizer, TrainResult]:
    cfg = preset.train
    torch.manual_seed(cfg.seed)
    corpus = load_corpus(cfg.corpus, max_bytes=cfg.corpus_bytes)
    log(f"corpus {corpus.describe()}")
    state = None
    if resume:
        if out_dir is None or not (out_dir / "trainer_state.pt").exists():
            raise FileNotFoundError(f"nothing to resume: no trainer_state.pt in {out_dir}")
        tokenizer = load_tokenizer(out_dir)
        model = load_model(out_dir, device=device, dtype=torch.float32).train()
        state = torch.load(out_dir / "trainer_state.pt", map_location=device, weights_only=True)
    else:
        tokenizer = preset_tokenizer(preset, corpus)
        model_cfg = replace(
            preset.model,
            vocab_size=tokenizer.vocab_size,
            bos_token_id=tokenizer.bos_id,
            eos_token_id=tokenizer.eos_id,
            pad_token_id=tokenizer.pad_id,
        )
        model = Transformer(model_cfg).to(device).train()
    data = TokenData.build(corpus, tokenizer)
    V = model.cfg.vocab_size
    result = TrainResult(
        preset=preset.name,
        device=str(device),
        num_params=model.cfg.num_params(),
        flops_per_token=model.cfg.flops_per_token(cfg.seq_len),
        unigram_ppl=unigram_perplexity(data.train, data.val, V),
    )
    log(
        f"{preset.name}: {result.num_params / 1e6:.2f}M params, {len(data.train) / 1e6:.2f}M train tokens, "
        f"{len(data.val) / 1e3:.0f}k val tokens, unigram perplexity {result.unigram_ppl:.1f}"
    )

    opt = _optimizer(model, cfg, device)
    start = 0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        start = state["step"]
        result.train_loss, result.val = [tuple(x) for x in state["train_loss"]], [tuple(x) for x in state["val"]]
    loss_fn = torch.compile(_loss) if cfg.compile else _loss
    autocast = cfg.autocast_bf16 and device.type == "cuda"
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    val_batches = eval_batches(data.val, cfg.batch_size, cfg.seq_len, cfg.eval_batches)
    gen = torch.Generator()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    t0 = time.perf_counter()
    t_steady, steady_step = None, None
    bar = tqdm(
        range(start, cfg.max_steps),
        desc=f"train {preset.name}",
        disable=not progress,
        initial=start,
        total=cfg.max_steps,
    )
    step = start
    for step in bar:
        if step - start == WARMUP_STEPS_EXCLUDED:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t_steady, steady_step = time.perf_counter(), step
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        gen.manual_seed(cfg.seed * 1_000_003 + step)  # per-step seed: a resumed run draws the same batches
        total = 0.0
        for _ in range(cfg.grad_accum):
            x, y = random_batch(data.train, cfg.batch_size, cfg.seq_len, gen)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with amp:
                loss = loss_fn(model, x, y) / cfg.grad_accum
            loss.backward()
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        last = step == cfg.max_steps - 1
        out_of_time = cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds
        if step % 10 == 0 or last or out_of_time:
            result.train_loss.append((step, float(total)))  # float() syncs: only every 10 steps
            bar.set_postfix(loss=f"{float(total):.3f}", lr=f"{lr_at(step, cfg):.1e}")
        if (step + 1) % cfg.eval_every == 0 or last or out_of_time:
            ppl = math.exp(evaluate(model, val_batches, device, autocast))
            result.val.append((step + 1, ppl))
            log(f"step {step + 1}: val perplexity {ppl:.2f} (unigram {result.unigram_ppl:.1f})")
        if out_of_time:
            log(f"stopping at step {step + 1}: the {cfg.max_seconds:.0f} s budget is spent")
            break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        result.peak_memory_bytes = torch.cuda.max_memory_allocated(device)
    t1 = time.perf_counter()
    result.steps = step + 1
    result.tokens = (result.steps - start) * cfg.tokens_per_step
    result.seconds = t1 - t0
    if t_steady is not None and step + 1 > steady_step:
        result.tokens_per_s = (step + 1 - steady_step) * cfg.tokens_per_step / (t1 - t_steady)
    if out_dir is not None:
        save_checkpoint(model, tokenizer, opt, result, preset, out_dir)
    return model.eval(), tokenizer, result


def save_checkpoint(model, tokenizer, opt, result: TrainResult, preset: Preset, out_dir: Path) -> None:
    save_model(model, out_dir, tokenizer)
    torch.save(
        {"step": result.steps, "optimizer": opt.state_dict(), "train_loss": result.train_loss, "val": result.val},
        out_dir / "trainer_state.pt",
    )
    info = {"preset": preset.name, "train_config": asdict(preset.train), **asdict(result)}
    (out_dir / "training.json").write_text(json.dumps(info, indent=1) + "\n")
