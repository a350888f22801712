"""The engine API the service and the benchmarks use: add a request, step, abort, read metrics.

Each `step()` asks the scheduler what to run, runs one packed forward, samples one token for every
sequence whose step reached its newest token, and returns what changed. With `overlap_steps`, a step
whose sampling is greedy is read one call late: the GPU takes the argmax and keeps the tokens, the next
call schedules and launches the next step (whose forward reads those tokens on the device) and only then
waits for them, so the host's work hides behind the GPU's. A sequence that ends on a token read late has
had one more row computed in the step launched meanwhile; that row is dropped. Step time is split into
schedule / prepare (building the step's input tensors) / forward (launching it, and on a CPU running it)
/ sample (reading tokens, which waits for the GPU), so a profile of the serving loop needs no profiler.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import NamedTuple

import torch
from tinyllm.model import Transformer
from tinyllm.sampling import SamplingParams, make_generator, sample

from mini_llm_server.block_manager import BlockManager
from mini_llm_server.config import EngineConfig
from mini_llm_server.gpu_timeline import GpuTimeline
from mini_llm_server.model_runner import ModelRunner, fused_weight_bytes, kv_bytes_per_block
from mini_llm_server.scheduler import Scheduler
from mini_llm_server.sequence import Sequence, Status

CPU_KV_BYTES = 256 * 2**20
# The engine's own inter-token intervals (a sequence's consecutive tokens, as the host reads them) are counted
# in bins of this width, up to ITL_BINS of them (longer gaps in the last): what the engine alone contributes to
# a stream's inter-token latency, before the HTTP side delivers it.
ITL_BIN_S, ITL_BINS = 10e-6, 5000


def histogram_percentile_ms(counts: list[int], q: float, bin_s: float = ITL_BIN_S) -> float:
    """The q-th percentile (0-100) of values counted in `counts` (bin i: [i, i + 1) x bin_s), in ms, at the
    upper edge of its bin; 0 with nothing counted."""
    total = sum(counts)
    if not total:
        return 0.0
    rank, seen = q / 100 * total, 0
    for i, c in enumerate(counts):
        seen += c
        if seen >= rank and c:
            return 1e3 * (i + 1) * bin_s
    return 1e3 * len(counts) * bin_s


@dataclass(frozen=True, slots=True)
class InFlight:
    """A launched step whose greedy tokens are still on their way to the host: `tokens[i]` is `seqs[i]`'s."""

    seqs: list[Sequence]
    tokens: torch.Tensor
    ready: torch.cuda.Event | None  # None: already there (off a GPU)


class RequestOutput(NamedTuple):  # not a frozen dataclass: its __init__ costs twice as much, per sequence per step
    request_id: int
    new_tokens: list[int]  # sampled this step
    # every token generated so far: the sequence's own list, not a copy (a copy, per sequence per step, grows
    # with the output), so later steps append to it; one that keeps an output past the next step copies it
    # (AsyncEngine), one that sends only new_tokens does not (the engine process)
    output: list[int]
    finished: bool
    finish_reason: str | None  # "stop", "length", "context", "abort", "timeout"
    # when the engine read new_tokens off the GPU (time.perf_counter, one clock for every process on the host):
    # where the engine's own inter-token gap is counted, and where delivery's delay starts; 0.0 with no token
    read_at: float = 0.0


def pool_blocks(model: Transformer, config: EngineConfig) -> int:
    """The KV pool's size: given, or the byte budget over one block's bytes (all layers, K and V)."""
    if config.num_blocks is not None:
        return config.num_blocks
    per_block = kv_bytes_per_block(model, config.block_size)
    device = model.lm_head.weight.device
    if config.kv_cache_bytes is not None:
        budget = config.kv_cache_bytes
    elif device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # the runner's fused weight copies come out of the same memory, after the pool is sized
        budget = int(free * config.gpu_memory_fraction) - fused_weight_bytes(model)
    else:
        budget = CPU_KV_BYTES
    if budget < per_block:
        raise ValueError(f"a KV budget of {budget} bytes is less than one block ({per_block} bytes)")
    return budget // per_block


class LLMEngine:
    def __init__(
        self, model: Transformer, config: EngineConfig | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        config = config or EngineConfig()
        self.model, self.config, self.clock = model, config, clock
        num_blocks = pool_blocks(model, config)
        self.blocks = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(config, self.blocks)
        backend = config.attention_backend
        on_gpu = model.lm_head.weight.device.type == "cuda"
        paged = backend == "triton" or (backend == "auto" and on_gpu)
        graphs = config.max_num_seqs if config.cuda_graphs and paged and on_gpu else 0
        self.runner = ModelRunner(model, num_blocks, config.block_size, config.max_num_seqs, paged_kernel=paged,
                                  decode_graph_batch=graphs,
                                  mixed_graph_tokens=config.max_num_batched_tokens if graphs else 0)  # fmt: skip
        if config.gpu_timeline:
            if not on_gpu:
                raise ValueError("gpu_timeline times steps with CUDA events: the model must be on a CUDA device")
            self.runner.timeline = GpuTimeline()
        self.in_flight: InFlight | None = None
        self.seqs: dict[int, Sequence] = {}
        self._ids = itertools.count()
        self._done_at_add: list[RequestOutput] = []
        self.step_seconds = {"schedule": 0.0, "prepare": 0.0, "forward": 0.0, "sample": 0.0}
        # steps and their seconds by kind: "decode" (one new token per sequence), "mixed" (prompt chunks too);
        # a stream waits for every step, so the mixed steps' share and length set its inter-token tail. A
        # step's seconds run from the previous wait for the GPU to the wait that finds it done: with steps
        # overlapped, the time a call takes is mostly the previous step's GPU time, not its own.
        self.steps_by_kind = {"decode": 0, "mixed": 0}
        self.seconds_by_kind = {"decode": 0.0, "mixed": 0.0}
        self._unfinished_kinds: list[str] = []  # launched steps the host has not yet seen done, oldest first
        self._last_wait = 0.0
        self.gpu_wait_seconds = 0.0  # the host waiting for an overlapped step's tokens: the rest of step() is work
        self.num_steps = self.tokens_computed = self.tokens_generated = 0
        self.itl_counts = [0] * ITL_BINS
        self.peak_blocks_used, self.kv_util_at_peak = 0, 0.0

    # -- requests ------------------------------------------------------------------------------------------

    def add_request(
        self,
        prompt: Seq[int],
        params: SamplingParams,
        *,
        priority: int = 0,
        timeout: float | None = None,
        stop: Seq[str] = (),
        detokenize: Callable[[list[int]], str] | None = None,
    ) -> int:
        """Queue a request; returns its id. `stop` strings end it (reason "stop") as soon as the detokenized
        output contains one. Raises ValueError naming what is wrong with the request."""
        cfg = self.model.cfg
        prompt = list(prompt)
        if not prompt:
            raise ValueError("prompt: needs at least one token")
        if any(not 0 <= t < cfg.vocab_size for t in prompt):
            raise ValueError(f"prompt: token ids must be in [0, {cfg.vocab_size})")
        if len(prompt) >= cfg.max_seq_len:
            raise ValueError(
                f"prompt: {len(prompt)} tokens leave no room in the model's {cfg.max_seq_len}-token context"
            )
        total = min(len(prompt) + params.max_new_tokens, cfg.max_seq_len)
        if -(-total // self.config.block_size) > self.blocks.num_blocks:
            raise ValueError(f"request needs {total} tokens of KV cache, more than the whole pool holds "
                             f"({self.blocks.num_blocks} blocks of {self.config.block_size})")  # fmt: skip
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        stop = tuple(s for s in stop if s)
        if stop and detokenize is None:
            raise ValueError("stop: stop strings need a detokenize function to read the output as text")
        now = self.clock()
        seq = Sequence(seq_id=next(self._ids), prompt=prompt, params=params, arrival=now, priority=priority,
                       deadline=None if timeout is None else now + timeout,
                       generator=make_generator(params, self.runner.device), stop_strings=stop,
                       detokenize=detokenize)  # fmt: skip
        self.seqs[seq.seq_id] = seq
        if params.max_new_tokens == 0:
            self._finish(seq, "length")
            self._done_at_add.append(RequestOutput(seq.seq_id, [], [], True, "length"))
        else:
            self.scheduler.add(seq)
        return seq.seq_id

    def abort(self, request_id: int) -> bool:
        """End a request now, freeing its blocks; False if it is unknown or already finished."""
        seq = self.seqs.get(request_id)
        if seq is None or seq.finished:
            return False
        self._finish(seq, "abort")
        return True

    def _finish(self, seq: Sequence, reason: str) -> None:
        self.scheduler.remove(seq)
        if self.runner is not None:
            self.runner.block_tables.release(seq)
        seq.status, seq.finish_reason = Status.FINISHED, reason
        self.seqs.pop(seq.seq_id, None)

    def close(self) -> None:
        """Drop the model runner (KV pool, fused weight copies, CUDA graphs) so its device memory can be freed
        now rather than whenever the last reference to the engine goes; the engine cannot step afterwards."""
        self.runner = None

    def has_unfinished(self) -> bool:
        in_flight = self.in_flight is not None and not all(seq.finished for seq in self.in_flight.seqs)
        return self.scheduler.has_work() or bool(self._done_at_add) or in_flight

    # -- the loop ------------------------------------------------------------------------------------------

    # excerpt: step
    def step(self) -> list[RequestOutput]:
        outputs, self._done_at_add = self._done_at_add, []
        t0 = time.perf_counter()
        schedule = self.scheduler.schedule(self.clock())
        for seq in schedule.timed_out:
            self._finish(seq, "timeout")
            outputs.append(RequestOutput(seq.seq_id, [], list(seq.output), True, "timeout"))
        for seq in schedule.preempted:  # back in the queue without blocks
            self.runner.block_tables.release(seq)
        t1 = time.perf_counter()
        if not schedule.seqs:
            if self.runner.timeline is not None:
                self.runner.timeline.pause()
            self.step_seconds["schedule"] += t1 - t0
            outputs += self._read_in_flight()
            self.step_seconds["sample"] += time.perf_counter() - t1
            return outputs
        if self.in_flight is not None and all(seq.finished for seq in self.in_flight.seqs):
            self._unfinished_kinds = []  # a step whose rows were all dropped, maybe long ago: not a step's time
        elif self.in_flight is None and not self._unfinished_kinds:  # the GPU has nothing of ours: start the clock
            self._last_wait = t0
        kind = "decode" if all(item.num_tokens == 1 for item in schedule.seqs) else "mixed"
        self.runner.copy_blocks(schedule.copies)
        prepared = self.runner.prepare_seconds
        logits = self.runner.execute(schedule.seqs)
        for item in schedule.seqs:
            item.seq.num_computed = item.start + item.num_tokens
        sampling = [item.seq for item in schedule.seqs if item.samples]  # a prompt chunk short of its end: none
        launched = None
        if sampling and self.config.overlap_steps and all(seq.params.greedy for seq in sampling):
            launched = InFlight(sampling, *self.runner.sample_greedy(logits))
            for row, seq in enumerate(sampling):
                seq.num_pending, seq.sampled_row = seq.num_pending + 1, row
        t2 = time.perf_counter()
        prepare = self.runner.prepare_seconds - prepared
        # the last step's tokens, while the GPU runs this one; they end some sequences that this step has
        # just computed a row for, which is dropped
        outputs += self._read_in_flight()
        self._unfinished_kinds.append(kind)
        for item in schedule.seqs:
            if not item.seq.finished:  # the tokens its full blocks hash are all known now
                self.blocks.commit(item.seq)
        self._account(schedule.num_tokens)
        if launched is not None:
            self.in_flight = launched
        else:
            live = [seq for seq in sampling if not seq.finished]
            if len(live) < len(sampling):  # ended by the token just read: their rows are dropped
                logits = logits[[i for i, seq in enumerate(sampling) if not seq.finished]]
            tokens = self._sample(logits, live)
            now = time.perf_counter()
            for seq, token in zip(live, tokens, strict=True):
                self._append(seq, token, outputs, now)
            if live:  # reading their tokens waited for this step
                self._steps_done()
        t3 = time.perf_counter()
        times = (t1 - t0, prepare, t2 - t1 - prepare, t3 - t2)
        for key, dt in zip(("schedule", "prepare", "forward", "sample"), times, strict=True):
            self.step_seconds[key] += dt
        return outputs

    # end-excerpt

    def _read_in_flight(self) -> list[RequestOutput]:
        """Wait for the launched step's greedy tokens and hand them to their sequences (none left in flight)."""
        launched, self.in_flight = self.in_flight, None
        if launched is None:
            return []
        if launched.ready is not None:
            t0 = time.perf_counter()
            launched.ready.synchronize()
            self.gpu_wait_seconds += time.perf_counter() - t0
        self._steps_done()
        outputs: list[RequestOutput] = []
        now = time.perf_counter()
        for seq, token in zip(launched.seqs, launched.tokens.tolist(), strict=True):
            if seq.finished:  # aborted, timed out, or ended by its previous token
                continue
            seq.num_pending -= 1
            self._append(seq, token, outputs, now)
        return outputs

    def _steps_done(self) -> None:
        """The host just waited for the GPU, so every step launched before now is done: they share the time
        since the last wait (a prompt chunk that samples nothing is seen done with the next step that does);
        a mixed step among them makes the interval a mixed one."""
        now, done = time.perf_counter(), self._unfinished_kinds
        if done:
            kind = "mixed" if "mixed" in done else "decode"
            self.steps_by_kind[kind] += len(done)
            self.seconds_by_kind[kind] += now - self._last_wait
        self._unfinished_kinds, self._last_wait = [], now

    def _append(self, seq: Sequence, token: int, outputs: list[RequestOutput], now: float) -> None:
        if seq.output:
            self.itl_counts[min(int((now - seq.last_token_at) / ITL_BIN_S), ITL_BINS - 1)] += 1
        seq.last_token_at = now
        seq.output.append(token)
        self.tokens_generated += 1
        reason = self._stop_reason(seq, token)
        if reason:
            self._finish(seq, reason)
        outputs.append(RequestOutput(seq.seq_id, [token], seq.output, reason is not None, reason, now))

    @staticmethod
    def _sample(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        """One token per logits row. Greedy rows share one argmax and one device-to-host copy (a copy per
        sequence would stall the GPU once per sequence per step); the others sample with their own params."""
        tokens = [0] * len(seqs)
        greedy = [i for i, s in enumerate(seqs) if s.params.greedy]
        if greedy:
            rows = logits if len(greedy) == len(seqs) else logits[greedy]
            for i, t in zip(greedy, rows.argmax(dim=-1).tolist(), strict=True):
                tokens[i] = t
        for i, s in enumerate(seqs):
            if not s.params.greedy:
                tokens[i] = int(sample(logits[i : i + 1], s.params, s.generator)[0])
        return tokens

    def _stop_reason(self, seq: Sequence, token: int) -> str | None:
        if token in seq.params.stop_token_ids:
            return "stop"
        if seq.stop_strings and any(s in seq.detokenize(seq.output) for s in seq.stop_strings):
            return "stop"
        if len(seq.output) >= seq.params.max_new_tokens:
            return "length"
        if seq.num_known >= self.model.cfg.max_seq_len:
            return "context"
        return None

    def _account(self, num_tokens: int) -> None:
        self.num_steps += 1
        self.tokens_computed += num_tokens
        used = self.blocks.stats().used
        if used and used >= self.peak_blocks_used:  # utilisation at peak load: live tokens / slots held
            live = sum(s.num_computed for s in self.scheduler.running)
            self.peak_blocks_used, self.kv_util_at_peak = used, live / (used * self.config.block_size)

    def generate(self, prompts: Seq[Seq[int]], params: SamplingParams) -> list[list[int]]:
        """Run prompts to completion through the scheduler; the new tokens of each, in order."""
        ids = [self.add_request(p, params) for p in prompts]
        results: dict[int, list[int]] = {}
        while self.has_unfinished():
            for out in self.step():
                if out.finished:
                    results[out.request_id] = out.output
        return [results[i] for i in ids]

    def metrics(self) -> dict[str, float | int]:
        stats = self.blocks.stats()
        live = sum(s.num_computed for s in self.scheduler.running)
        slots = stats.used * self.config.block_size
        return {
            "waiting": len(self.scheduler.waiting),
            "running": len(self.scheduler.running),
            "kv_blocks_total": stats.num_blocks,
            "kv_blocks_used": stats.used,
            "kv_blocks_free": stats.free + stats.evictable,
            "kv_blocks_cached": stats.evictable,
            # slots held but not (yet) holding a token: the partly filled last block of each sequence; below 0
            # when sequences share prefix blocks
            "kv_fragmentation": 1.0 - live / slots if slots else 0.0,
            "preemptions": self.scheduler.num_preemptions,
            "prefix_cache_hit_rate": self.blocks.prefix_hits / max(self.blocks.prefix_queries, 1),
            "steps": self.num_steps,
            "tokens_computed": self.tokens_computed,
            "tokens_generated": self.tokens_generated,
            "kv_blocks_peak": self.peak_blocks_used,
            "kv_util_at_peak": self.kv_util_at_peak,  # > 1 when sequences share prefix blocks
            **{f"{k}_seconds": v for k, v in self.step_seconds.items()},
            **{f"{k}_steps": v for k, v in self.steps_by_kind.items()},
            **{f"{k}_step_seconds": v for k, v in self.seconds_by_kind.items()},
            "gpu_wait_seconds": self.gpu_wait_seconds,
            **{f"itl_p{q}_ms": histogram_percentile_ms(self.itl_counts, q) for q in (50, 95, 99)},
            # the gaps' histogram itself, sparse (bin: count), so a caller can take percentiles over a window
            "itl_histogram": {b: c for b, c in enumerate(self.itl_counts) if c},
            **self._timeline_metrics(),
        }

    def _timeline_metrics(self) -> dict[str, float | int]:
        """gpu_{kind}_{steps, gpu_busy_ms, ...} per kind of step (GpuTimeline.summary), with gpu_timeline."""
        if self.runner.timeline is None:
            return {}
        return {f"gpu_{kind}_{k.removeprefix('gpu_')}": v for kind, s in self.runner.timeline.summary().items()
                for k, v in s.items()}  # fmt: skip
