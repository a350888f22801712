"""What a project registers with the harness, the context its benchmark runs in, and discovery.

A project exposes one `Project` object through the entry point group "mlsys.projects" in its
pyproject.toml, so `mlsys bench all` and `mlsys blog all` find every project without a hand-kept list:

    [project.entry-points."mlsys.projects"]
    cuda-matmul = "cuda_matmul.report:PROJECT"
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from mlsys_bench.ceilings import Ceilings
from mlsys_bench.environment import capture_environment
from mlsys_bench.plots import save_figure
from mlsys_bench.record import Column, Record, write_record
from mlsys_bench.timing import TimingConfig

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from mlsys_bench.results import ResultSet

ENTRY_POINT_GROUP = "mlsys.projects"
T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchContext:
    """Everything a project's benchmark needs: where it runs, at what scale, and where results go."""

    project: str
    device: torch.device
    scale: str  # "gpu": the sizes the README is about; "cpu": small smoke sizes for a CPU-only machine
    hardware: str
    results_dir: Path  # <project>/results/<hardware>/
    repo: Path
    ceilings: Ceilings | None
    csv: bool = False
    show_progress: bool = True
    written: list[Path] = field(default_factory=list)

    def progress(self, items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
        from tqdm import tqdm

        yield from tqdm(items, desc=f"{self.project}: {desc}", total=total, disable=not self.show_progress, leave=False)

    def record(
        self,
        *,
        benchmark: str,
        columns: Sequence[Column],
        rows: Sequence[dict[str, Any]],
        config: dict[str, Any],
        timing: TimingConfig,
        method: str,
        notes: str = "",
    ) -> Record:
        """Build, validate and write one record to results/<hardware>/<benchmark>.json."""
        rec = Record(
            project=self.project,
            benchmark=benchmark,
            scale=self.scale,
            hardware=self.hardware,
            environment=capture_environment(self.repo),
            ceilings=self.ceilings.to_dict() if self.ceilings else None,
            config=config,
            timing={**timing.to_dict(), "method": method, "statistic": "median"},
            columns=tuple(columns),
            rows=tuple(rows),
            notes=notes,
        )
        self.written.append(write_record(rec, self.results_dir / f"{benchmark}.json", csv_too=self.csv))
        return rec

    def figure(self, fig: Figure, name: str) -> Path:
        path = save_figure(fig, self.results_dir / f"{name}.png")
        self.written.append(path)
        return path


@dataclass(frozen=True, slots=True, kw_only=True)
class Project:
    """A project's registration: its benchmark, its generated documents, its headline numbers."""

    name: str  # folder name under projects/ and results/ key, e.g. "cuda-matmul"
    title: str  # the blog post's title
    summary: str  # one line for the project tables
    root: Path  # the project's folder (holds README.md, templates/, results/)
    bench: Callable[[BenchContext], None]
    headline: Callable[[ResultSet], list[str]]  # short strings, e.g. "copy 3.0 TB/s"; [] if nothing measured
    publish: tuple[str, ...]  # hardware labels whose results the README and post show, in order of preference
    template_globals: dict[str, Any] = field(default_factory=dict)  # extra names the templates may use

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"project name must be a plain folder name, got {self.name!r}")
        if not self.publish:
            raise ValueError(f"{self.name}: publish needs at least one hardware label")

    @property
    def results_root(self) -> Path:
        return self.root / "results"

    @property
    def templates(self) -> Path:
        return self.root / "templates"


def project_root(module_file: str) -> Path:
    """The project folder of a module in <root>/src/<pkg>/: the folder holding pyproject.toml."""
    for parent in Path(module_file).resolve().parents:
        if (parent / "pyproject.toml").exists():
            return parent
    raise RuntimeError(f"{module_file} is not inside a source checkout (no pyproject.toml above it)")


def discover() -> dict[str, Project]:
    """Every registered project, by name, sorted."""
    found: dict[str, Project] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        if not isinstance(obj, Project):
            raise TypeError(f"entry point {ep.name} = {ep.value} is a {type(obj).__name__}, not a Project")
        if obj.name in found and found[obj.name].root != obj.root:
            raise RuntimeError(f"two projects are registered as {obj.name!r}: {found[obj.name].root}, {obj.root}")
        found[obj.name] = obj
    return dict(sorted(found.items()))


def select(projects: dict[str, Project], which: str) -> list[Project]:
    if which == "all":
        return list(projects.values())
    if which not in projects:
        raise SystemExit(f"unknown project {which!r}; registered: {', '.join(projects) or 'none'}")
    return [projects[which]]
