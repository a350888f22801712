"""Peak memory of a region: CUDA allocator high-water marks and the process's resident set."""

from __future__ import annotations

import resource
from dataclasses import asdict, dataclass
from types import TracebackType

import psutil
import torch


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryPeak:
    cuda_allocated_bytes: int | None  # max bytes held by tensors during the region
    cuda_reserved_bytes: int | None  # max bytes the caching allocator took from the driver
    rss_bytes: int  # resident set at the end of the region
    max_rss_bytes: int  # the process's lifetime peak resident set (the OS keeps only that)

    def to_dict(self) -> dict[str, int | None]:
        return asdict(self)


class PeakMemory:
    """Context manager: `with PeakMemory(device) as pm: ...; pm.result.cuda_allocated_bytes`."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else None
        self.result: MemoryPeak | None = None

    def _cuda(self) -> bool:
        return self.device is not None and self.device.type == "cuda"

    def __enter__(self) -> PeakMemory:
        if self._cuda():
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        allocated = reserved = None
        if self._cuda():
            torch.cuda.synchronize(self.device)
            allocated = torch.cuda.max_memory_allocated(self.device)
            reserved = torch.cuda.max_memory_reserved(self.device)
        self.result = MemoryPeak(
            cuda_allocated_bytes=allocated,
            cuda_reserved_bytes=reserved,
            rss_bytes=psutil.Process().memory_info().rss,
            max_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux reports KiB
        )
