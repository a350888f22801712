"""The ladder: one registry of rungs that drives the build, the tests, the benchmark and the README."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Rung:
    number: int
    name: str
    source: str  # file under csrc/
    dtype: str  # "fp32", or "bf16" (inputs; accumulation and output are fp32)
    idea: str  # the one new idea of this rung

    @property
    def label(self) -> str:
        return f"{self.number:02d}_{self.name}"


RUNGS = (
    Rung(number=1, name="naive", source="01_naive.cu", dtype="fp32", idea="one thread per output, uncoalesced"),
    Rung(number=2, name="coalesced", source="02_coalesced.cu", dtype="fp32", idea="a warp covers a row segment"),
    Rung(number=3, name="smem_tiling", source="03_smem_tiling.cu", dtype="fp32", idea="32x32 tiles in shared memory"),
    Rung(number=4, name="blocktile_1d", source="04_blocktile_1d.cu", dtype="fp32", idea="8 outputs per thread"),
    Rung(number=5, name="blocktile_2d", source="05_blocktile_2d.cu", dtype="fp32", idea="8x8 outputs per thread"),
    Rung(number=6, name="vectorized", source="06_vectorized.cu", dtype="fp32", idea="16-byte loads, A transposed"),
    Rung(number=7, name="warptile", source="07_warptile.cu", dtype="fp32", idea="warp tiles, 128 outputs/thread"),
    Rung(number=8, name="double_buffer", source="08_double_buffer.cu", dtype="fp32", idea="cp.async, 2x fragments"),
    Rung(number=9, name="tensor_core", source="09_tensor_core.cu", dtype="bf16", idea="bf16 WMMA on tensor cores"),
    Rung(number=10, name="wgmma", source="10_wgmma.cu", dtype="bf16", idea="TMA + wgmma, warp-specialised"),
)
BY_NAME = {r.name: r for r in RUNGS} | {r.label: r for r in RUNGS} | {str(r.number): r for r in RUNGS}


def get(rung: int | str) -> Rung:
    key = str(rung)
    if key not in BY_NAME:
        raise ValueError(f"unknown rung {rung!r}; rungs: {', '.join(r.label for r in RUNGS)}")
    return BY_NAME[key]
