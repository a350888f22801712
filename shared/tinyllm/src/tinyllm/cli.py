"""`tinyllm train | generate | eval | inspect`.

tinyllm train --preset tiny [--out DIR] [--resume] [--set max_steps=200 --set lr=1e-3]
tinyllm generate --model tiny --prompt "def main(" [--temperature 0.8 --top-p 0.95 --seed 0]
tinyllm eval --model tiny [--window 256 --stride 128]
tinyllm inspect --model tiny             shapes at every op, KV-cache and activation memory
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from tinyllm.presets import PRESETS, TrainConfig, get_preset
from tinyllm.registry import load, preset_dir
from tinyllm.sampling import SamplingParams


def _device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _overrides(pairs: list[str]) -> dict:
    """--set key=value pairs for TrainConfig fields, converted to each field's type."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--set {pair!r}: expected FIELD=VALUE with FIELD one of {', '.join(fields)}")
        default = getattr(PRESETS["tiny"].train, key)
        if isinstance(default, bool):
            out[key] = value.lower() in ("1", "true", "yes")
        elif value.lower() == "none":
            out[key] = None
        else:
            kind = type(default) if default is not None else float
            try:
                out[key] = kind(float(value)) if kind is int else kind(value)
            except ValueError:
                raise SystemExit(f"--set {pair!r}: {value!r} is not a valid {kind.__name__}") from None
    return out


def cmd_train(args) -> int:
    from tinyllm.train import train

    preset = get_preset(args.preset, **_overrides(args.set))
    out = args.out or preset_dir(args.preset)
    device = _device(args.device)
    _, _, r = train(preset, out, device, resume=args.resume, progress=not args.no_progress)
    print(
        f"{preset.name}: {r.steps} steps, {r.tokens / 1e6:.1f}M tokens in {r.seconds:.0f} s, "
        f"{r.tokens_per_s:,.0f} tokens/s on {device}"
    )
    print(f"validation perplexity {r.val_ppl:.2f} vs unigram baseline {r.unigram_ppl:.1f}")
    print(f"saved to {out}")
    return 0


def _load(args):
    device = _device(args.device)
    model, tok = load(args.model, device=device, train_if_missing=args.train_if_missing)
    if tok is None:
        raise SystemExit(f"{args.model} has no tokenizer.json; generate and eval need one")
    return model, tok, device


def cmd_generate(args) -> int:
    from tinyllm.generate import generate
    from tinyllm.instrument import trace_shapes

    model, tok, _ = _load(args)
    params = SamplingParams(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        stop_token_ids=(tok.eos_id,) if tok.eos_id is not None else (),
    )
    ids = tok.encode(args.prompt, bos=tok.bos_id is not None)
    sys.stdout.write(args.prompt)
    emitted: list[int] = []

    def stream(_, token):  # decode the whole suffix: a byte-level token can end mid-character
        before = tok.decode(emitted)
        emitted.append(token)
        sys.stdout.write(tok.decode(emitted)[len(before) :])
        sys.stdout.flush()

    with trace_shapes(model, log=lambda s: print(s, file=sys.stderr)) if args.trace_shapes else _null():
        result = generate(model, [ids], params, on_token=stream)
    print(f"\n[{len(result.tokens[0])} tokens, finished: {result.finish_reasons[0]}]", file=sys.stderr)
    return 0


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def cmd_eval(args) -> int:
    from tinyllm.corpus import load_corpus
    from tinyllm.data import tokenize
    from tinyllm.perplexity import perplexity

    model, tok, _ = _load(args)
    corpus = load_corpus(args.corpus)
    tokens = tokenize(corpus.val, tok)[: args.max_tokens]
    ppl = perplexity(model, tokens, window=args.window, stride=args.stride)
    print(f"{args.model} on {corpus.name} validation ({len(tokens)} tokens): perplexity {ppl:.2f}")
    return 0


def cmd_inspect(args) -> int:
    from tinyllm.instrument import activation_memory_by_layer, trace_shapes

    model, tok, device = _load(args)
    cfg = model.cfg
    print(
        f"{cfg.n_layers} layers, dim {cfg.dim}, {cfg.n_heads} heads ({cfg.n_kv_heads} KV), head dim {cfg.hd}, "
        f"{cfg.num_params() / 1e6:.2f}M parameters"
    )
    tokens = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len + 1), device=device)
    with trace_shapes(model):
        model(tokens[:, :-1])
    dtype_bytes = model.lm_head.weight.element_size()
    per_token = cfg.kv_bytes_per_token(dtype_bytes)
    print(
        f"KV cache: {per_token} bytes per token, {per_token * cfg.max_seq_len / 2**20:.2f} MiB per "
        f"{cfg.max_seq_len}-token sequence"
    )
    mem = activation_memory_by_layer(model.train(), tokens)
    print(f"activation memory for one training step, batch {args.batch} x {args.seq_len}:")
    for name, nbytes in mem.items():
        print(f"  {name:14s} {nbytes / 2**20:8.2f} MiB")
    print(f"  {'total':14s} {sum(mem.values()) / 2**20:8.2f} MiB")
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tinyllm", description="Train, run and inspect the shared reference transformer.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a preset")
    p.add_argument("--preset", required=True, choices=list(PRESETS))
    p.add_argument("--out", type=Path, help="checkpoint directory (default: the cache)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a TrainConfig field")
    p.add_argument("--device")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(fn=cmd_train)

    def model_args(p):
        p.add_argument("--model", required=True, help="a preset name or a Hugging Face checkpoint directory")
        p.add_argument("--train-if-missing", action="store_true", help="train a preset that is not cached yet")
        p.add_argument("--device")

    p = sub.add_parser("generate", help="generate text, streamed")
    model_args(p)
    p.add_argument("--prompt", required=True)
    sp = SamplingParams()
    p.add_argument("--max-new-tokens", type=int, default=sp.max_new_tokens)
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy")
    p.add_argument("--top-k", type=int, default=sp.top_k)
    p.add_argument("--top-p", type=float, default=sp.top_p)
    p.add_argument("--seed", type=int, default=sp.seed)
    p.add_argument("--trace-shapes", action="store_true", help="print the shape at every major op to stderr")
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("eval", help="sliding-window perplexity on a corpus's validation split")
    model_args(p)
    p.add_argument("--corpus", default="stdlib")
    p.add_argument("--window", type=int)
    p.add_argument("--stride", type=int)
    p.add_argument("--max-tokens", type=int, default=100_000)
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("inspect", help="shapes, KV-cache bytes, activation memory by layer")
    model_args(p)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=64)
    p.set_defaults(fn=cmd_inspect)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"tinyllm: error: {e}", file=sys.stderr)
        return 2
