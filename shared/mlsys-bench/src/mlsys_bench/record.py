"""The result record: one JSON file per benchmark run, its schema, validation, reading and writing.

Schema "mlsys-bench.record/1" (documented in shared/mlsys-bench/README.md):

    schema       "mlsys-bench.record/1"
    project      the project's name, e.g. "cuda-matmul"
    benchmark    the benchmark's name inside the project, e.g. "ladder"
    scale        "gpu" (the sizes the project's table is about) or "cpu" (small smoke sizes)
    hardware     the results folder name, e.g. "h100-80gb-hbm3"
    environment  environment.capture_environment(): command, git, GPU, CPU, versions, UTC time
    ceilings     ceilings.Ceilings.to_dict() for this device, or null
    config       free-form JSON: the benchmark's own settings
    timing       {"method", "warmup", "repeats", "flush_l2", "statistic"}
    columns      [{"name", "unit", "kind": "param"|"metric", "description"}]
    rows         [{column name: value}], every row holding exactly the declared columns; metric
                 values are finite numbers or null (not run: unsupported, out of memory); params are
                 strings, numbers or booleans
    notes        free text

Files live at projects/<name>/results/<hardware>/<benchmark>.json.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "mlsys-bench.record/1"
SCALES = ("gpu", "cpu")
KINDS = ("param", "metric")
TOP_LEVEL = {
    "schema": str,
    "project": str,
    "benchmark": str,
    "scale": str,
    "hardware": str,
    "environment": dict,
    "ceilings": (dict, type(None)),
    "config": dict,
    "timing": dict,
    "columns": list,
    "rows": list,
    "notes": str,
}
TIMING_KEYS = {"method": str, "warmup": int, "repeats": int, "flush_l2": bool, "statistic": str}


class RecordError(ValueError):
    """A record that does not follow the schema; the message names the offending field."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Column:
    name: str
    unit: str  # "" when dimensionless
    kind: str  # "param": what was varied; "metric": what was measured
    description: str = ""


def param(name: str, unit: str = "", description: str = "") -> Column:
    return Column(name=name, unit=unit, kind="param", description=description)


def metric(name: str, unit: str, description: str = "") -> Column:
    return Column(name=name, unit=unit, kind="metric", description=description)


def _type_name(t: Any) -> str:
    return " or ".join(x.__name__ for x in t) if isinstance(t, tuple) else t.__name__


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def validate(d: Any) -> None:
    """Raise RecordError naming the first field that breaks the schema."""
    if not isinstance(d, dict):
        raise RecordError(f"record must be a JSON object, got {type(d).__name__}")
    missing = [k for k in TOP_LEVEL if k not in d]
    if missing:
        raise RecordError(f"record is missing field(s): {', '.join(missing)}")
    extra = [k for k in d if k not in TOP_LEVEL]
    if extra:
        raise RecordError(f"record has unknown field(s): {', '.join(extra)}")
    for key, t in TOP_LEVEL.items():
        if not isinstance(d[key], t):
            raise RecordError(f"{key}: expected {_type_name(t)}, got {type(d[key]).__name__}")
    if d["schema"] != SCHEMA:
        raise RecordError(f"schema: expected {SCHEMA!r}, got {d['schema']!r}")
    if d["scale"] not in SCALES:
        raise RecordError(f"scale: expected one of {SCALES}, got {d['scale']!r}")
    for key in ("project", "benchmark", "hardware"):
        if not d[key] or "/" in d[key]:
            raise RecordError(f"{key}: must be a non-empty name without '/', got {d[key]!r}")
    for key, t in TIMING_KEYS.items():
        if not isinstance(d["timing"].get(key), t):
            raise RecordError(f"timing.{key}: expected {t.__name__}, got {d['timing'].get(key)!r}")
    names: list[str] = []
    for i, col in enumerate(d["columns"]):
        where = f"columns[{i}]"
        if not isinstance(col, dict) or set(col) != {"name", "unit", "kind", "description"}:
            raise RecordError(f"{where}: expected an object with name, unit, kind, description")
        if not all(isinstance(col[k], str) for k in col):
            raise RecordError(f"{where}: name, unit, kind and description must be strings")
        if col["kind"] not in KINDS:
            raise RecordError(f"{where}.kind: expected one of {KINDS}, got {col['kind']!r}")
        if not col["name"] or col["name"] in names:
            raise RecordError(f"{where}.name: empty or repeated column name {col['name']!r}")
        names.append(col["name"])
    if not names:
        raise RecordError("columns: a record needs at least one column")
    kinds = {c["name"]: c["kind"] for c in d["columns"]}
    for i, row in enumerate(d["rows"]):
        if not isinstance(row, dict):
            raise RecordError(f"rows[{i}]: expected an object, got {type(row).__name__}")
        if set(row) != set(names):
            missing, extra = set(names) - set(row), set(row) - set(names)
            raise RecordError(f"rows[{i}]: missing {sorted(missing)}, undeclared {sorted(extra)}")
        for name, value in row.items():
            where = f"rows[{i}].{name}"
            if kinds[name] == "metric":
                if value is not None and not _is_number(value):
                    raise RecordError(f"{where}: metric must be a number or null, got {value!r}")
                if _is_number(value) and not math.isfinite(value):
                    raise RecordError(f"{where}: metric must be finite, got {value!r}")
            elif not isinstance(value, str | int | float | bool):
                raise RecordError(f"{where}: param must be a string, number or boolean, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    project: str
    benchmark: str
    scale: str
    hardware: str
    environment: dict[str, Any]
    ceilings: dict[str, Any] | None
    config: dict[str, Any]
    timing: dict[str, Any]
    columns: tuple[Column, ...]
    rows: tuple[dict[str, Any], ...]
    notes: str = ""
    schema: str = field(default=SCHEMA)

    def __post_init__(self) -> None:
        validate(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "project": self.project,
            "benchmark": self.benchmark,
            "scale": self.scale,
            "hardware": self.hardware,
            "environment": self.environment,
            "ceilings": self.ceilings,
            "config": self.config,
            "timing": self.timing,
            "columns": [
                {"name": c.name, "unit": c.unit, "kind": c.kind, "description": c.description} for c in self.columns
            ],
            "rows": [dict(r) for r in self.rows],
            "notes": self.notes,
        }

    @staticmethod
    def from_dict(d: Any) -> Record:
        validate(d)
        return Record(
            **{k: v for k, v in d.items() if k not in ("columns", "rows")},
            columns=tuple(Column(**c) for c in d["columns"]),
            rows=tuple(d["rows"]),
        )

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.project}/{self.benchmark} has no column {name!r}; it has {self.names}")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def where(self, **params: Any) -> list[dict[str, Any]]:
        """Rows whose columns equal the given values."""
        for k in params:
            self.column(k)
        return [r for r in self.rows if all(r[k] == v for k, v in params.items())]

    def value(self, name: str, **params: Any) -> Any:
        """The single value of column `name` in the one row matching `params`."""
        rows = self.where(**params)
        if len(rows) != 1:
            raise KeyError(f"{self.project}/{self.benchmark}: {len(rows)} rows match {params}, expected 1")
        return rows[0][self.column(name).name]


def write_record(record: Record, path: Path, *, csv_too: bool = False) -> Path:
    """Write atomically (temp file + rename), so an interrupted run never leaves half a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record.to_dict(), indent=1, allow_nan=False) + "\n")
    tmp.replace(path)
    if csv_too:
        write_csv(record, path.with_suffix(".csv"))
    return path


def read_record(path: Path) -> Record:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no result file at {path}") from None
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}: not valid JSON ({e})") from None
    try:
        return Record.from_dict(data)
    except RecordError as e:
        raise RecordError(f"{path}: {e}") from None


def write_csv(record: Record, path: Path) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f"{c.name} [{c.unit}]" if c.unit else c.name for c in record.columns])
        for row in record.rows:
            w.writerow(["" if row[c.name] is None else row[c.name] for c in record.columns])
    return path
