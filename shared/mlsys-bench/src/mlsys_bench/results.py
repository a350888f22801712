"""A project's committed results, as the generated documents see them.

Only the hardware a project publishes is loaded, in its order of preference, so a CPU smoke run on a
laptop or CI machine never changes the README: those files land in results/cpu-*/ and stay out of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlsys_bench.record import Record, read_record


@dataclass(frozen=True, slots=True)
class ResultSet:
    project: str
    by_hardware: dict[str, dict[str, Record]]  # hardware -> benchmark -> record, in publish order

    @staticmethod
    def load(project: str, results_root: Path, publish: tuple[str, ...]) -> ResultSet:
        by_hw: dict[str, dict[str, Record]] = {}
        for hw in publish:
            folder = results_root / hw
            records = {}
            for path in sorted(folder.glob("*.json")):
                rec = read_record(path)
                if rec.project != project or rec.benchmark != path.stem or rec.hardware != hw:
                    raise ValueError(
                        f"{path}: holds {rec.project}/{rec.hardware}/{rec.benchmark}, not what its path says"
                    )
                records[rec.benchmark] = rec
            if records:
                by_hw[hw] = records
        return ResultSet(project, by_hw)

    def get(self, benchmark: str) -> Record | None:
        """The benchmark's record on the most preferred hardware that has one, or None."""
        for records in self.by_hardware.values():
            if benchmark in records:
                return records[benchmark]
        return None

    def require(self, benchmark: str) -> Record:
        rec = self.get(benchmark)
        if rec is None:
            raise KeyError(f"{self.project}: no published result for benchmark {benchmark!r}")
        return rec

    def __bool__(self) -> bool:
        return bool(self.by_hardware)
