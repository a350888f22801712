"""Charts in one house style: line (sweeps), bar (ladders, comparisons), grouped bar (implementations side by
side at each size, the FlashAttention papers' format), roofline.

Built on matplotlib's object API (no pyplot), so nothing global is touched and no display is needed.
PNG metadata is cleared so regenerating a chart from the same data gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from mlsys_bench.ceilings import Ceilings

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf")
STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def _figure(title: str, xlabel: str, ylabel: str) -> tuple[Figure, object]:
    import matplotlib

    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(7.0, 4.2), dpi=150, layout="constrained")
        ax = fig.add_subplot()
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3, which="both")
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def line_chart(
    series: Mapping[str, tuple[Sequence[float], Sequence[float | None]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    logy: bool = False,
    hlines: Mapping[str, float] | None = None,
) -> Figure:
    """One line per series; None values (not run) leave a gap. hlines draw labelled ceilings."""
    fig, ax = _figure(title, xlabel, ylabel)
    for i, (label, (xs, ys)) in enumerate(series.items()):
        pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", ms=3.5, lw=1.5, label=label, color=PALETTE[i % 9])
    for j, (label, y) in enumerate((hlines or {}).items()):
        ax.axhline(y, ls="--", lw=1, color="black", alpha=0.6 - 0.15 * j)
        ax.annotate(label, (0.01, y), xycoords=("axes fraction", "data"), va="bottom", fontsize=8)
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.legend(frameon=False)
    return fig


def bar_chart(
    values: Mapping[str, float | None],
    *,
    title: str,
    ylabel: str,
    reference: tuple[str, float] | None = None,
) -> Figure:
    """Vertical bars with their values printed on top; `reference` draws a dashed line (a baseline)."""
    fig, ax = _figure(title, "", ylabel)
    labels = list(values)
    heights = [values[k] or 0.0 for k in labels]
    bars = ax.bar(range(len(labels)), heights, color=[PALETTE[i % 9] for i in range(len(labels))])
    for bar, key in zip(bars, labels, strict=True):
        text = "n/a" if values[key] is None else f"{values[key]:.3g}"
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 4 else 0, ha="right")
    if reference:
        ax.axhline(reference[1], ls="--", lw=1, color="black")
        ax.annotate(
            reference[0], (0.99, reference[1]), xycoords=("axes fraction", "data"), ha="right", va="bottom", fontsize=8
        )
    return fig


def grouped_bar_chart(
    groups: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
) -> Figure:
    """One cluster of bars per group (e.g. a sequence length), one bar per series in each, its value on top;
    None (not run, out of memory) leaves the slot empty and prints "n/a"."""
    for label, values in series.items():
        if len(values) != len(groups):
            raise ValueError(f"series {label!r} has {len(values)} values for {len(groups)} groups")
    fig, ax = _figure(title, xlabel, ylabel)
    width = 0.8 / max(len(series), 1)
    for i, (label, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, [v or 0.0 for v in values], width, label=label, color=PALETTE[i % 9])
        for bar, v in zip(bars, values, strict=True):
            text = "n/a" if v is None else f"{v:.0f}"
            x = bar.get_x() + bar.get_width() / 2
            ax.annotate(text, (x, bar.get_height()), ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_xticks(range(len(groups)), list(groups))
    ax.grid(False, axis="x")
    ax.margins(y=0.15)
    ax.legend(frameon=False, fontsize=8, ncols=min(len(series), 3))
    return fig


def roofline_chart(
    ceilings: Ceilings,
    points: Sequence[tuple[str, float, float]],
    *,
    dtype: str,
    title: str,
) -> Figure:
    """Log-log roofline from the probed ceilings, with (label, FLOP/byte, TFLOP/s) points placed on it."""
    fig, ax = _figure(title, "arithmetic intensity (FLOP / byte of device memory traffic)", "TFLOP/s")
    ridge = ceilings.ridge_point(dtype)
    lo = min([ridge / 100] + [p[1] / 2 for p in points])
    hi = max([ridge * 100] + [p[1] * 2 for p in points])
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    ax.plot(
        xs,
        [ceilings.attainable_TFLOPs(x, dtype) for x in xs],
        color="black",
        lw=1.5,
        label=f"roof: {ceilings.copy_GBps / 1e3:.2f} TB/s, {ceilings.matmul_TFLOPs[dtype]:.0f} TFLOP/s {dtype}",
    )
    ax.axvline(ridge, ls=":", color="gray", lw=1)
    ax.annotate(
        f"ridge {ridge:.0f} FLOP/B", (ridge, ceilings.matmul_TFLOPs[dtype] / 20), fontsize=8, rotation=90, ha="right"
    )
    for i, (label, intensity, value) in enumerate(points):
        ax.plot([intensity], [value], marker="o", ls="", color=PALETTE[(i + 1) % 9], label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.legend(frameon=False, fontsize=7)
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    return path
