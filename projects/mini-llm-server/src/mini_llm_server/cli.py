"""`mini-llm-server serve` (the HTTP service), `generate` (prompts through the engine), `load` (drive a server),
`soak` (a bounded overload soak), `bench` (through the harness), `serving-bench`, `goal-bench` and `step-bench` (GPU),
`gc-bench` and `host-bench` (the serving processes' host: GC pauses, the engine's work per step)."""

from __future__ import annotations

import argparse
import contextlib
import functools

from tinyllm import registry
from tinyllm.sampling import SamplingParams

from mini_llm_server.config import EngineConfig
from mini_llm_server.engine import LLMEngine


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from mini_llm_server.api import ServiceConfig, create_app
    from mini_llm_server.async_engine import AsyncEngine
    from mini_llm_server.chat_template import load_chat_template
    from mini_llm_server.heap import freeze_startup_heap

    if args.api_servers < 1:
        raise SystemExit(f"--api-servers must be >= 1, got {args.api_servers}")
    model, tok = registry.load(args.model, train_if_missing=True)
    if tok is None:
        raise SystemExit(f"{args.model}: the checkpoint has no tokenizer.json; the service needs one")
    service = ServiceConfig(model_name=args.model, max_queue=args.max_queue,
                            chat_template=load_chat_template(registry.resolve(args.model)))  # fmt: skip
    factory = functools.partial(registry.load, args.model)  # the engine process builds its own copy
    if args.api_servers > 1:
        import signal

        from mini_llm_server.api_servers import ApiServers

        del model
        servers = ApiServers(factory, tok, EngineConfig(), service, args.api_servers, args.host, args.port, "info")
        print(f"serving {args.model} on {servers.url} from {args.api_servers} API server processes", flush=True)
        # a SIGTERM to this process drains the service the way Ctrl-C does (which reaches every process)
        signal.signal(signal.SIGTERM, lambda *_: servers.stop())
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: the API processes drain, then wait() stops
            servers.wait()
        return 0
    if args.engine_process:
        from mini_llm_server.engine_process import EngineProcess

        del model
        engine = EngineProcess(factory)
    else:
        engine = AsyncEngine(LLMEngine(model))
    app = create_app(engine, tok, service)
    freeze_startup_heap()
    uvicorn.run(app, host=args.host, port=args.port)
    return 0


def _load(args: argparse.Namespace) -> int:
    import asyncio

    from mini_llm_server.load import LoadConfig, client_pool, run, run_split, summarize
    from mini_llm_server.load_record import write_load_record

    if args.processes < 1:
        raise SystemExit(f"--processes must be >= 1, got {args.processes}")
    cfg = LoadConfig(url=args.url, model=args.model, num_requests=args.requests, concurrency=args.concurrency,
                     rate=args.rate, output_tokens=tuple(args.output_tokens))  # fmt: skip
    if args.processes == 1:
        summary = summarize(*asyncio.run(run(cfg)))
    else:
        with client_pool(args.processes) as pool:
            summary = summarize(*run_split(cfg, pool, args.processes))
    for key, value in summary.items():
        print(f"{key:>16}: {value if value is None or isinstance(value, int) else f'{value:.3f}'}")
    print(f"wrote {write_load_record(cfg, summary, args.hardware)}")
    return 0


def _soak(args: argparse.Namespace) -> int:
    from mini_llm_server.soak import SoakConfig, run_soak, write_soak_record

    model, tok = registry.load(args.model, train_if_missing=True)
    if tok is None:
        raise SystemExit(f"{args.model}: the checkpoint has no tokenizer.json; the service needs one")
    cfg = SoakConfig(duration_s=args.duration, rate=args.rate, disconnect_fraction=args.disconnect_fraction,
                     max_queue=args.max_queue)  # fmt: skip
    summary = run_soak(model, tok, cfg)
    for key, value in summary.items():
        print(f"{key:>22}: {value if isinstance(value, int) else f'{value:.1f}'}")
    print(f"wrote {write_soak_record(cfg, summary, args.model)}")
    return 0 if summary["lost"] == summary["corrupted"] == summary["kv_blocks_used_at_end"] == 0 else 1


def _serving_bench(args: argparse.Namespace) -> int:
    import torch

    from mini_llm_server.serving import ServingConfig, gpu_model, measure, write_serving_record

    if not torch.cuda.is_available():
        raise SystemExit("serving-bench measures the service on a GPU; none is visible here")
    device = torch.device("cuda")
    model, tok = gpu_model(device)
    cfg = ServingConfig()
    rows = measure(model, tok, cfg, factory=functools.partial(gpu_model, device, tok))  # built in the engine process
    print(f"wrote {write_serving_record(rows, cfg, 'tinyllama-1.1b-random (small tokenizer)', device)}")
    return 0


def _gc_bench(args: argparse.Namespace) -> int:
    import torch
    from tinyllm.model import Transformer
    from tinyllm.presets import get_preset

    from mini_llm_server.engine_process import copy_of
    from mini_llm_server.heap import measure, write_gc_record
    from mini_llm_server.serving import gpu_model

    if torch.cuda.is_available():  # the serving benchmark's model, built in the engine process
        device, name = torch.device("cuda"), "tinyllama-1.1b-random (small tokenizer)"
        tok = registry.tokenizer("small")
        factory = functools.partial(gpu_model, device, tok)
    else:  # the CPU service's default preset, random weights (the heap, not the text, is measured)
        device, name = torch.device("cpu"), "tiny-random"
        tok = registry.tokenizer("tiny")
        factory = functools.partial(copy_of, Transformer(get_preset("tiny").model).eval(), tok)
    rows = measure(factory, tok, EngineConfig())
    for r in rows:
        print(f"  {r}", flush=True)
    print(f"wrote {write_gc_record(rows, name, device)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mini-llm-server", description="A small vLLM: continuous batching engine.")
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate completions for prompts with the engine")
    g.add_argument("prompts", nargs="+")
    g.add_argument("--model", default="tiny", help="a shared-model preset name or a checkpoint directory")
    g.add_argument("--max-tokens", type=int, default=48)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--policy", default="continuous", choices=("continuous", "static", "fifo"))
    v = sub.add_parser("serve", help="the OpenAI-compatible HTTP service")
    v.add_argument("--model", default="tiny", help="a shared-model preset name or a checkpoint directory")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--max-queue", type=int, default=64, help="waiting requests beyond which new ones get 429")
    v.add_argument(
        "--engine-process",
        action="store_true",
        help="run the engine in a process of its own (no interpreter lock shared with the HTTP side)",
    )
    v.add_argument(
        "--api-servers",
        type=int,
        default=1,
        help="HTTP processes sharing the port in front of one engine process (more than 1 implies --engine-process)",
    )
    ld = sub.add_parser("load", help="drive a running server: closed-loop concurrency or open-loop Poisson rate")
    ld.add_argument("--url", default="http://127.0.0.1:8000")
    ld.add_argument("--model", default="tiny")
    mode = ld.add_mutually_exclusive_group(required=True)
    mode.add_argument("--concurrency", type=int, help="closed loop: this many clients back to back")
    mode.add_argument("--rate", type=float, help="open loop: Poisson arrivals, requests per second")
    ld.add_argument("--requests", type=int, default=64)
    ld.add_argument("--output-tokens", type=int, nargs=2, default=(16, 128), metavar=("MIN", "MAX"))
    ld.add_argument(
        "--processes",
        type=int,
        default=1,
        help="client processes sharing the load (one Python process falls behind at thousands of tokens/s)",
    )
    ld.add_argument("--hardware", help="the server's hardware label for the record (default: this machine's)")
    sk = sub.add_parser("soak", help="overload a fresh in-process server for a while; check nothing is lost or leaked")
    sk.add_argument("--model", default="tiny", help="a shared-model preset name or a checkpoint directory")
    sk.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    sk.add_argument("--rate", type=float, default=30.0, help="requests offered per second (Poisson)")
    sk.add_argument("--disconnect-fraction", type=float, default=0.2, help="clients that hang up mid-stream")
    sk.add_argument("--max-queue", type=int, default=16, help="the server's waiting-request bound")
    sub.add_parser("serving-bench", help="TTFT/ITL by policy and concurrency, then 2x overload (GPU)")
    gb = sub.add_parser("goal-bench", help="the 32-stream inter-token goal, fresh services x workload seeds (GPU)")
    gb.add_argument(
        "--step-tokens",
        nargs="+",
        metavar="TOKENS[:PROMPT_TOKENS]",
        help="step budgets: tokens per step, prompt tokens per step at most (default: GoalConfig's)",
    )
    gb.add_argument("--label", default="", help="write goal_runs_LABEL.json, beside an earlier machine's run")
    sub.add_parser("step-bench", help="GPU time of a decode step and of steps carrying prompts, by size (GPU)")
    sub.add_parser("gc-bench", help="a full GC in the engine and API processes, before and after the freeze")
    sub.add_parser("host-bench", help="the engine's host time per step at 32 and 128 sequences, forward stubbed")
    b = sub.add_parser("bench", help="the offline throughput benchmark (same as `mlsys bench mini-llm-server`)")
    b.add_argument("--scale", choices=("auto", "gpu", "cpu"), default="auto")
    b.add_argument("--tables", action="store_true")
    args = ap.parse_args(argv)
    if args.command == "load":
        return _load(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "soak":
        return _soak(args)
    if args.command == "serving-bench":
        return _serving_bench(args)
    if args.command == "goal-bench":
        from mini_llm_server.goal_runs import main as goal_bench
        from mini_llm_server.goal_runs import parse_budget

        try:
            budgets = tuple(parse_budget(b) for b in args.step_tokens or ())
        except ValueError as e:
            ap.error(f"--step-tokens: {e}")
        print(f"wrote {goal_bench(budgets, args.label)}")
        return 0
    if args.command == "gc-bench":
        return _gc_bench(args)
    if args.command == "step-bench":
        from mini_llm_server.step_costs import main as step_bench

        for path in step_bench():
            print(f"wrote {path}")
        return 0
    if args.command == "host-bench":
        from mini_llm_server.host_costs import main as host_bench

        for path in host_bench():
            print(f"wrote {path}")
        return 0
    if args.command == "bench":
        from mlsys_bench.cli import main as mlsys_main

        return mlsys_main(["bench", "mini-llm-server", "--scale", args.scale, *(["--tables"] if args.tables else [])])
    model, tok = registry.load(args.model, train_if_missing=True)
    if tok is None:
        raise SystemExit(f"{args.model}: the checkpoint has no tokenizer.json; the command needs one for text prompts")
    engine = LLMEngine(model, EngineConfig(policy=args.policy))
    params = SamplingParams(temperature=args.temperature, max_new_tokens=args.max_tokens)
    outs = engine.generate([tok.encode(p) for p in args.prompts], params)
    for prompt, out in zip(args.prompts, outs, strict=True):
        print(f"{prompt!r} -> {tok.decode(out)!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
