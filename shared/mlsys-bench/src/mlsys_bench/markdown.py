"""Markdown building blocks: tables from records, marked sections, code excerpts pulled from source.

Sections a generator owns are fenced by comments, so the hand-written rest of a file is never touched:

    <!-- mlsys:results:begin -->  ...generated...  <!-- mlsys:results:end -->

Code excerpts are marked in the source file itself, so a post quotes the code as it is today:

    # excerpt: online-softmax          (or // excerpt: ... in C++/CUDA)
    ...lines quoted...
    # end-excerpt
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlsys_bench.record import Record

LANGS = {
    ".py": "python",
    ".cu": "cuda",
    ".cuh": "cuda",
    ".cpp": "cpp",
    ".h": "cpp",
    ".toml": "toml",
    ".sh": "bash",
}


def fmt(value: Any, spec: str | None = None) -> str:
    """'n/a' for None, integers as they are, other numbers to 3 significant digits unless `spec` says."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if spec is None:
        spec = "d" if isinstance(value, int) else (".0f" if abs(value) >= 1000 else ".3g")
    return format(value, spec)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: Sequence[str] | None = None) -> str:
    """A GitHub markdown table; `align` holds 'l' or 'r' per column (numbers default to right)."""
    if align is None:
        align = ["r" if rows and isinstance(rows[0][i], int | float) else "l" for i in range(len(headers))]
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def record_table(
    record: Record,
    columns: Sequence[str] | None = None,
    formats: Mapping[str, str] | None = None,
    rows: Sequence[dict[str, Any]] | None = None,
) -> str:
    """A table of a record's rows (or a filtered subset), headers carrying units: 'copy (GB/s)'."""
    names = list(columns or record.names)
    cols = [record.column(n) for n in names]
    formats = formats or {}
    headers = [f"{c.name} ({c.unit})" if c.unit else c.name for c in cols]
    body = [[fmt(r[c.name], formats.get(c.name)) for c in cols] for r in (rows or record.rows)]
    align = ["r" if c.kind == "metric" or c.unit else "l" for c in cols]
    return table(headers, body, align)


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- mlsys:{name}:begin -->", f"<!-- mlsys:{name}:end -->"


def replace_section(text: str, name: str, body: str, *, where: str = "file") -> str:
    """Replace what lies between the begin/end markers of section `name`; both must be present once."""
    begin, end = _markers(name)
    if text.count(begin) != 1 or text.count(end) != 1:
        raise ValueError(f"{where}: needs exactly one '{begin}' and one '{end}' marker")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    return f"{head}{begin}\n{body.strip()}\n{end}{tail}"


def excerpt(path: Path, name: str) -> str:
    """The dedented lines between 'excerpt: NAME' and the next 'end-excerpt' in `path`, fenced."""
    lines = path.read_text().splitlines()
    start = [i for i, line in enumerate(lines) if re.search(rf"\bexcerpt: {re.escape(name)}\s*$", line)]
    if len(start) != 1:
        raise ValueError(f"{path}: expected one 'excerpt: {name}' marker, found {len(start)}")
    for j in range(start[0] + 1, len(lines)):
        if re.search(r"\bend-excerpt\s*$", lines[j]):
            body = textwrap.dedent("\n".join(lines[start[0] + 1 : j])).strip("\n")
            return f"```{LANGS.get(path.suffix, '')}\n{body}\n```"
    raise ValueError(f"{path}: excerpt {name!r} has no 'end-excerpt' line")
