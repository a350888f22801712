"""The service's Prometheus series: gauges read from the engine at scrape time, and the per-token series
(tokens generated, requests refused, TTFT and inter-token latency histograms) as plain numbers.

The per-token series are written once or more per streamed token, so they skip prometheus_client's lock
per sample (its Histogram and Counter take three locked increments per token): each API server process
adds to a row of its own in a flat array of floats, only from its event loop's thread, and a scrape of
any process sums every row. With one process the array is a list; with several it is shared memory
(`shared_cells`), so /metrics answers for the whole service whichever process takes the scrape.
"""

from __future__ import annotations

import bisect
import itertools
import multiprocessing
from collections.abc import MutableSequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from mini_llm_server.engine import ITL_BIN_S, ITL_BINS, histogram_percentile_ms

TOKENS, REJECTED = 0, 1  # a row's first two cells


@dataclass(frozen=True, slots=True)
class RowHistogram:
    """A histogram kept in a row from `offset`: a count per bound and one above them all, then the sum."""

    name: str
    doc: str
    bounds: tuple[float, ...]
    offset: int

    @property
    def end(self) -> int:
        return self.offset + len(self.bounds) + 2

    def family(self, row: list[float]) -> HistogramMetricFamily:
        counts = row[self.offset : self.end - 1]
        cumulative = list(itertools.accumulate(counts))
        buckets = [(str(b), c) for b, c in zip((*self.bounds, "+Inf"), cumulative, strict=True)]
        return HistogramMetricFamily(self.name, self.doc, buckets=buckets, sum_value=row[self.end - 1])


TTFT = RowHistogram("mini_llm_time_to_first_token_seconds", "TTFT", (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                    offset=REJECTED + 1)  # fmt: skip
ITL = RowHistogram("mini_llm_inter_token_latency_seconds", "time between tokens",
                   (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1), offset=TTFT.end)  # fmt: skip
# A stream's inter-token gaps inside its API process, in the engine's 10-us bins (engine.ITL_BIN_S): as its
# task takes a token off the engine's pipe (TAKEN), and once the token's event is written to the socket
# (WRITTEN). Beside the engine's own gaps and the client's they split delivery's tail into hops. Then each
# token's delay at the same two points since the engine read it off the GPU (RequestOutput.read_at; for a
# stream that takes several tokens at once, its newest): a gap's percentile mixes delivery's delays with the
# engine's own gaps, the delay is delivery's alone. Kept out of /metrics (5000 buckets make no Prometheus
# series); serving-bench reads them (StreamStats.percentile_ms).
TAKEN, WRITTEN = ITL.end, ITL.end + ITL_BINS
TAKEN_DELAY, WRITTEN_DELAY = WRITTEN + ITL_BINS, WRITTEN + 2 * ITL_BINS
ROW = WRITTEN_DELAY + ITL_BINS


def shared_cells(processes: int) -> MutableSequence[float]:
    """Zeroed rows for `processes` API server processes, in memory they share (handed to them at spawn)."""
    return multiprocessing.get_context("spawn").RawArray("d", processes * ROW)


class StreamStats:
    """One process's row of the per-token series, and (as a collector) the sum of every row."""

    def __init__(self, cells: MutableSequence[float] | None = None, row: int = 0) -> None:
        self.cells = cells if cells is not None else [0.0] * ROW
        self.at = row * ROW

    def add_tokens(self, n: int) -> None:
        self.cells[self.at + TOKENS] += n

    def reject(self) -> None:
        self.cells[self.at + REJECTED] += 1

    def observe(self, histogram: RowHistogram, value: float) -> None:
        start = self.at + histogram.offset
        self.cells[start + bisect.bisect_left(histogram.bounds, value)] += 1  # le: the first bound >= value
        self.cells[start + len(histogram.bounds) + 1] += value

    def count(self, at: int, seconds: float) -> None:
        """One time in 10-us bins: an inter-token gap (at TAKEN or WRITTEN) or a delay since the engine's read
        (TAKEN_DELAY, WRITTEN_DELAY); a negative one (clocks that disagree) in the first bin."""
        self.cells[self.at + at + max(0, min(int(seconds / ITL_BIN_S), ITL_BINS - 1))] += 1

    def percentile_ms(self, at: int, q: float, since: list[float] | None = None) -> float:
        """The q-th percentile of the times counted at `at` (TAKEN, WRITTEN, TAKEN_DELAY, WRITTEN_DELAY), every
        process's, in ms; with `since` (an earlier snapshot()), of those counted after it only."""
        counts = self.totals(at, at + ITL_BINS)
        if since is not None:
            earlier = StreamStats(since).totals(at, at + ITL_BINS)
            counts = [now - then for now, then in zip(counts, earlier, strict=True)]
        return histogram_percentile_ms(counts, q)

    def snapshot(self) -> list[float]:
        """Every process's row as of now, for percentile_ms(since=...)."""
        return self.cells[:]

    def totals(self, first: int = 0, end: int = ROW) -> list[float]:
        """Cells first .. end - 1 of a row, summed over every process's row."""
        cells = self.cells[:]  # a snapshot: other processes go on writing theirs
        return [sum(cells[k::ROW]) for k in range(first, end)]

    def collect(self):
        row = self.totals(end=ITL.end)  # the exported series only: the gaps' 10k cells stay out of a scrape
        yield CounterMetricFamily("mini_llm_generated_tokens", "tokens generated", value=row[TOKENS])
        yield CounterMetricFamily("mini_llm_rejected_requests", "requests refused with 429", value=row[REJECTED])
        yield TTFT.family(row)
        yield ITL.family(row)


class Metrics:
    """Prometheus series, in a registry of their own (no process-global state)."""

    def __init__(self, stats: StreamStats | None = None) -> None:
        self.registry = r = CollectorRegistry()
        self.queue = Gauge("mini_llm_queue_depth", "requests waiting", registry=r)
        self.running = Gauge("mini_llm_running_sequences", "sequences in the batch", registry=r)
        self.kv_used = Gauge("mini_llm_kv_blocks_used", "KV blocks referenced", registry=r)
        self.kv_free = Gauge("mini_llm_kv_blocks_free", "KV blocks allocatable", registry=r)
        self.kv_fragmentation = Gauge("mini_llm_kv_fragmentation", "held KV slots not holding a token", registry=r)
        self.preemptions = Gauge("mini_llm_preemptions", "preemptions since start", registry=r)
        self.streams = stats or StreamStats()
        r.register(self.streams)

    def update(self, engine_metrics: dict) -> None:
        m = engine_metrics
        self.queue.set(m["waiting"])
        self.running.set(m["running"])
        self.kv_used.set(m["kv_blocks_used"])
        self.kv_free.set(m["kv_blocks_free"])
        self.kv_fragmentation.set(m["kv_fragmentation"])
        self.preemptions.set(m["preemptions"])
