"""host-bench: the engine's real step on N running sequences with the forward stubbed out, alone and beside a
spinning process; its phases add up to no more than the step's time, and the record holds a row per load."""

from mini_llm_server.host_costs import PHASES, HostCostConfig, measure, write_record
from mlsys_bench.record import read_record


def test_host_bench_times_the_engines_steps_at_each_load(tmp_path):
    cfg = HostCostConfig(sequences=(4, 12), max_num_batched_tokens=32, prompt_tokens=(5, 40), output_tokens=(3, 20),
                         warmup_steps=20, steps=20, repeats=3, busy_cores=(0, 1))  # fmt: skip
    rows = measure(cfg)
    assert [(r["sequences"], r["busy_cores"]) for r in rows] == [(4, 0), (4, 1), (12, 0), (12, 1)]
    for r in rows:
        phases = sum(r[f"{k}_ms"] for k in PHASES)
        assert r["steps"] == 60 and 0 < phases <= r["host_ms_per_step"], r
        assert 0 < r["mixed_share"] < 1  # requests keep arriving: some steps carry prompts, most decode
        assert r["us_per_sequence"] == 1e3 * r["host_ms_per_step"] / r["sequences"]
    path = write_record(rows, cfg, "cpu-test", root=tmp_path)
    assert [r["sequences"] for r in read_record(path).rows] == [4, 4, 12, 12]
