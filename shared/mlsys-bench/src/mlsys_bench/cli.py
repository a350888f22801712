"""The `mlsys` command: env, bench, blog, projects.

mlsys env [--json] [--reprobe] [--save]     the captured environment and the machine's ceilings
mlsys bench PROJECT|all [--scale ...]       run registered benchmarks; results/<hardware>/*.json
mlsys blog PROJECT|all [--check]            regenerate README sections, posts and indexes
mlsys projects [--json]                     the registered projects (CI builds its matrix from it)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import torch

from mlsys_bench.blog import generate, workspace_root
from mlsys_bench.ceilings import load_or_probe
from mlsys_bench.environment import capture_environment, hardware_label
from mlsys_bench.markdown import record_table
from mlsys_bench.project import BenchContext, Project, discover, select


def _device(scale: str) -> torch.device:
    if scale == "gpu" and not torch.cuda.is_available():
        raise SystemExit("--scale gpu needs a CUDA GPU, and torch sees none (torch.cuda.is_available() is False)")
    if scale == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", 0)


def cmd_env(args: argparse.Namespace) -> int:
    device = _device(args.scale)
    env = capture_environment(workspace_root())
    ceilings = None if args.no_probe else load_or_probe(device, reprobe=args.reprobe)
    if args.save:
        if ceilings is None:
            raise SystemExit("--save needs the ceilings; drop --no-probe")
        from mlsys_bench.machine import PROJECT, record_ceilings

        record_ceilings(_context(PROJECT, device, args, ceilings))
    if args.json:
        print(json.dumps({"environment": env, "ceilings": ceilings and ceilings.to_dict()}, indent=1))
        return 0
    gpu, cpu = env["gpu"], env["cpu"]
    print(f"command      {env['command']}\nutc          {env['utc_time']}")
    print(f"git          {env['git']['commit']} (dirty: {env['git']['dirty']})")
    if gpu:
        print(
            f"gpu          {gpu['name']} x{gpu['count']}, {gpu['sm_count']} SMs, {gpu['memory_GiB']} GiB, "
            f"L2 {gpu['l2_MiB']} MiB, sm_{gpu['capability'].replace('.', '')}, "
            f"driver {gpu['driver']}, CUDA {gpu['cuda_runtime']}"
        )
    else:
        print("gpu          none (torch.cuda.is_available() is False)")
    print(f"cpu          {cpu['model']}, {cpu['logical_cores']} logical cores, {cpu['memory_GiB']} GiB")
    print(f"software     python {env['python']}, torch {env['torch']}, triton {env['triton']}, numpy {env['numpy']}")
    print(f"hardware     {hardware_label(device)}")
    if ceilings:
        mm = ", ".join(f"{k} {v:.1f}" for k, v in ceilings.matmul_TFLOPs.items())
        print(
            f"ceilings     copy {ceilings.copy_GBps:.0f} GB/s (read + write); matmul TFLOP/s: {mm}"
            f"  [measured {ceilings.measured_utc}]"
        )
    return 0


def _context(project: Project, device: torch.device, args: argparse.Namespace, ceilings) -> BenchContext:
    hw = hardware_label(device)
    return BenchContext(
        project=project.name,
        device=device,
        scale="gpu" if device.type == "cuda" else "cpu",
        hardware=hw,
        results_dir=project.results_root / hw,
        repo=project.root,
        ceilings=ceilings,
        csv=getattr(args, "csv", False),
        show_progress=not getattr(args, "no_progress", False),
    )


def cmd_bench(args: argparse.Namespace) -> int:
    device = _device(args.scale)
    projects = select(discover(), args.project)
    ceilings = load_or_probe(device)
    print(
        f"bench on {hardware_label(device)} at {'GPU' if device.type == 'cuda' else 'CPU (smoke)'} sizes",
        file=sys.stderr,
    )
    for project in projects:
        ctx = _context(project, device, args, ceilings)
        t0 = time.perf_counter()
        project.bench(ctx)
        print(f"\n## {project.name} ({time.perf_counter() - t0:.1f} s)")
        for path in ctx.written:
            print(f"  wrote {path}")
            if path.suffix == ".json" and args.tables:
                from mlsys_bench.record import read_record

                print(record_table(read_record(path)))
    return 0


def cmd_blog(args: argparse.Namespace) -> int:
    every = discover()
    stale = generate(select(every, args.project), list(every.values()), workspace_root(), check=args.check)
    ws = workspace_root()
    for path in stale:
        print(f"{'stale' if args.check else 'wrote'} {path.relative_to(ws)}")
    if args.check and stale:
        print("generated files are out of date with the results: run `uv run mlsys blog all`", file=sys.stderr)
        return 1
    if not stale:
        print("generated files are up to date")
    return 0


def cmd_projects(args: argparse.Namespace) -> int:
    projects = discover()
    if args.json:
        ws = workspace_root()
        print(json.dumps([{"name": p.name, "path": str(p.root.relative_to(ws))} for p in projects.values()]))
    else:
        for p in projects.values():
            print(f"{p.name:24s} {p.summary}")
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mlsys", description="Benchmark, report and publish the ML-systems projects.")
    sub = ap.add_subparsers(dest="command", required=True)
    scale = {
        "choices": ("auto", "gpu", "cpu"),
        "default": "auto",
        "help": "gpu: full sizes on CUDA; cpu: small smoke sizes; auto: gpu if one is present",
    }

    p = sub.add_parser("env", help="print the environment and the machine's ceilings")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--reprobe", action="store_true", help="measure the ceilings again instead of using the cache")
    p.add_argument("--no-probe", action="store_true", help="skip the ceilings")
    p.add_argument("--save", action="store_true", help="also write the ceilings record to shared/mlsys-bench/results/")
    p.add_argument("--scale", **scale)
    p.set_defaults(fn=cmd_env)

    p = sub.add_parser("bench", help="run registered benchmarks")
    p.add_argument("project", help="a project name, or 'all'")
    p.add_argument("--scale", **scale)
    p.add_argument("--csv", action="store_true", help="write a CSV beside each JSON record")
    p.add_argument("--tables", action="store_true", help="print each record as a table")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(fn=cmd_bench)

    p = sub.add_parser("blog", help="regenerate README sections, posts and indexes from committed results")
    p.add_argument("project", help="a project name, or 'all'")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if a generated file is stale")
    p.set_defaults(fn=cmd_blog)

    p = sub.add_parser("projects", help="list the registered projects")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_projects)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.fn(args)


def project_main(project: str, build: Callable[[], str], argv: list[str] | None = None) -> int:
    """The command a kernel project installs: `<project> bench` (= `mlsys bench <project>`) and
    `<project> build` (compile its extension and print what was built)."""
    ap = argparse.ArgumentParser(prog=project, description=f"{project}: build and benchmark.")
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help=f"run the benchmark (same as `mlsys bench {project}`)")
    b.add_argument("--scale", choices=("auto", "gpu", "cpu"), default="auto")
    b.add_argument("--tables", action="store_true")
    sub.add_parser("build", help="compile the extension (cached) and say what was built")
    args = ap.parse_args(argv)
    if args.command == "build":
        print(build())
        return 0
    return main(["bench", project, "--scale", args.scale, *(["--tables"] if args.tables else [])])
