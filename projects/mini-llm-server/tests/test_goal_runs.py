"""goal-bench at toy scale on the CPU: every (budget, service, seed) run is a row, measured over that run alone
(the engine's and the API processes' counters differenced), and the record is written."""

import functools

import pytest
import torch

pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from mini_llm_server.engine import ITL_BINS  # noqa: E402
from mini_llm_server.engine_process import copy_of  # noqa: E402
from mini_llm_server.goal_runs import GoalConfig, _hist_delta, measure, parse_budget, write_goal_record  # noqa: E402
from mini_llm_server.serving import ServingConfig  # noqa: E402


def test_hist_delta_counts_only_the_window():
    delta = _hist_delta({3: 5, 7: 1}, {3: 6, 7: 1, 9: 2})
    assert len(delta) == ITL_BINS and delta[3] == 1 and delta[7] == 0 and delta[9] == 2 and sum(delta) == 3


def test_step_budgets_parse_and_are_checked():
    assert parse_budget("256") == (256, None) and parse_budget("256:96") == (256, 96)
    for bad in ("x", "256:", "256:0", "0", "256:96:1"):
        with pytest.raises(ValueError, match="step budget|max_"):
            parse_budget(bad)


def test_goal_bench_at_toy_scale(parts, tmp_path):
    from mlsys_bench.record import read_record

    model, tok = parts
    serving = ServingConfig(concurrencies=(1, 3, 4), sweep_concurrency=3, requests_per_client=2, min_requests=3,
                            prompt_words=(2, 6), output_tokens=(3, 6), max_num_seqs=4, client_processes=2,
                            api_servers=2)  # fmt: skip
    cfg = GoalConfig(services=1, seeds=2, step_budgets=((16, None), (16, 4)), top_runs=1, batch1_requests=2,
                     serving=serving)  # fmt: skip
    rows = measure(functools.partial(copy_of, model, tok), tok, cfg)
    assert [(r["step_tokens"], r["prefill_tokens"], r["concurrency"]) for r in rows] == [
        (16, 16, 3), (16, 16, 3), (16, 16, 4), (16, 4, 3), (16, 4, 3), (16, 4, 4)]  # fmt: skip
    # prompts of their own within a service (no run replays another's prefixes), the same across budgets
    seeds = [r["seed"] for r in rows]
    assert len(set(seeds[:3])) == 3 and seeds[:3] == seeds[3:]
    for r in rows:
        assert r["requests"] == 2 * r["concurrency"] and r["errors"] == 0, r
        assert r["ratio"] == pytest.approx(r["itl_p95_ms"] / r["batch1_step_ms"]) and r["batch1_step_ms"] > 0
        # the service's own figures, over this run alone
        assert min(r["engine_itl_p95_ms"], r["taken_itl_p95_ms"], r["written_itl_p95_ms"]) > 0, r
        assert r["taken_delay_p95_ms"] > 0 and r["written_delay_p95_ms"] > 0, r
        assert 0 < r["mixed_step_share"] <= 1 and r["mixed_step_ms"] > 0, r
    path = write_goal_record(rows, cfg, "toy", torch.device("cpu"), root=tmp_path)
    assert len(read_record(path).rows) == len(rows)
