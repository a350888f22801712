"""Service measurements as harness records in this project's results/<hardware>/: a load run
(load-<mode>.json), and the context the soak and the serving benchmark write theirs through."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from mlsys_bench.environment import hardware_label
from mlsys_bench.project import BenchContext, project_root
from mlsys_bench.record import metric, param
from mlsys_bench.timing import TimingConfig

from mini_llm_server.load import LoadConfig


def service_context(hardware: str, root: Path | None = None) -> BenchContext:
    """A harness context for a measurement of the running service (the client runs on the CPU)."""
    root = root or project_root(__file__)
    scale = "cpu" if hardware.startswith("cpu-") else "gpu"
    return BenchContext(project="mini-llm-server", device=torch.device("cpu"), scale=scale, hardware=hardware,
                        results_dir=root / "results" / hardware, repo=root, ceilings=None,
                        show_progress=False)  # fmt: skip


def write_load_record(cfg: LoadConfig, summary: dict, hardware: str | None = None, root: Path | None = None) -> Path:
    hardware = hardware or hardware_label(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    ctx = service_context(hardware, root)
    mode = f"closed-c{cfg.concurrency}" if cfg.concurrency is not None else f"open-r{cfg.rate:g}"
    row = {"mode": mode, **summary}
    columns = [param("mode")] + [metric(k, "ms" if k.endswith("_ms") else "") for k in summary]
    ctx.record(benchmark=f"load-{mode}", columns=columns, rows=[row], config=asdict(cfg),
               timing=TimingConfig(warmup=0, repeats=1), method="client wall-clock (httpx, streaming)",
               notes="Latencies as the client sees them; 429s are counted apart from errors.")  # fmt: skip
    return ctx.written[-1]
