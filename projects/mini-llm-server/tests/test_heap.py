"""The startup heap's freeze: a full collection skips what was alive at the freeze, and gc-bench measures
that in fresh engine and API server processes."""

import functools
import gc

import torch
from mini_llm_server.config import EngineConfig
from mini_llm_server.engine_process import copy_of
from mini_llm_server.heap import collection_cost, measure, write_gc_record
from mlsys_bench.record import read_record


def _startup_like_heap():
    return [{"i": i, "pair": (i, [i])} for i in range(200_000)]  # tracked containers, as modules and apps hold


def test_a_frozen_heap_is_skipped_by_a_full_collection():
    cost = collection_cost(_startup_like_heap)
    assert cost["tracked_objects"] >= 400_000 and cost["frozen_objects"] >= 400_000, cost
    assert cost["full_collection_ms_frozen"] < cost["full_collection_ms"] / 10, cost
    assert gc.get_freeze_count() == 0  # this process is left as it was


def test_gc_bench_measures_the_engine_and_api_processes(parts, tmp_path):
    model, tok = parts
    rows = measure(functools.partial(copy_of, model, tok), tok, EngineConfig(num_blocks=16, block_size=8))
    assert [r["process"] for r in rows] == ["engine process", "API server process"]
    for r in rows:  # each imported torch at least: a large heap, then a full collection that skips it
        assert r["tracked_objects"] > 10_000 and r["frozen_objects"] > 10_000, r
        assert r["full_collection_ms_frozen"] < r["full_collection_ms"] / 10, r
    path = write_gc_record(rows, "toy", torch.device("cpu"), root=tmp_path)
    assert [r["process"] for r in read_record(path).rows] == ["engine process", "API server process"]
