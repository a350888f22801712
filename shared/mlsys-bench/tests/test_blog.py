"""The generator end to end on a throwaway workspace: render, staleness check, errors."""

import json

import pytest
from mlsys_bench.blog import generate, workspace_root
from mlsys_bench.project import Project
from mlsys_bench.record import Record, metric, param, write_record

RESULTS_TEMPLATE = """{% set r = results.get("sweep") -%}
{% if r is none %}nothing yet{% else %}{{ table(r, formats={"GBps": ".1f"}) }}
{{ figure(r, "sweep", "a chart") }}{% endif %}
"""
POST_TEMPLATE = """# {{ project.title }}

{{ excerpt("src/demo/core.py", "core") }}
{% set r = results.get("sweep") -%}
{% if r %}Peak {{ fmt(r.value("GBps", n=2), ".1f") }} GB/s on {{ env_line(r) }}.{% endif %}
"""


def _record(gbps: float) -> Record:
    return Record(
        project="demo",
        benchmark="sweep",
        scale="gpu",
        hardware="gpu-x",
        environment={
            "gpu": {"name": "GPU X", "cuda_runtime": "13.0"},
            "torch": "2.11",
            "triton": None,
            "git": {"commit": "0123456789abcdef", "dirty": False},
            "cpu": {},
        },
        ceilings=None,
        config={},
        timing={"method": "cuda-events", "warmup": 1, "repeats": 2, "flush_l2": True, "statistic": "median"},
        columns=(param("n"), metric("GBps", "GB/s")),
        rows=({"n": 1, "GBps": 1.0}, {"n": 2, "GBps": gbps}),
    )


@pytest.fixture
def ws(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.uv.workspace]\nmembers = ['projects/*']\n")
    (tmp_path / "README.md").write_text("# Top\n<!-- mlsys:projects:begin -->\n<!-- mlsys:projects:end -->\n")
    root = tmp_path / "projects" / "demo"
    (root / "templates").mkdir(parents=True)
    (root / "templates" / "results.md").write_text(RESULTS_TEMPLATE)
    (root / "templates" / "post.md").write_text(POST_TEMPLATE)
    (root / "src" / "demo").mkdir(parents=True)
    (root / "src" / "demo" / "core.py").write_text("# excerpt: core\ny = x + 1\n# end-excerpt\n")
    (root / "README.md").write_text(
        "# demo\nhand-written\n<!-- mlsys:results:begin -->\n<!-- mlsys:results:end -->\nmore\n"
    )
    project = Project(
        name="demo",
        title="Demo post",
        summary="a demo",
        root=root,
        bench=lambda ctx: None,
        headline=lambda rs: [f"{rs.require('sweep').value('GBps', n=2):.0f} GB/s"],
        publish=("gpu-x",),
    )
    return tmp_path, project


def test_renders_without_results(ws):
    tmp, p = ws
    assert generate([p], [p], tmp, check=False)
    readme = (p.root / "README.md").read_text()
    assert "nothing yet" in readme and "hand-written" in readme and readme.endswith("more\n")
    assert "not measured yet" in (tmp / "blog" / "index.md").read_text()
    assert generate([p], [p], tmp, check=True) == []


def test_renders_results_and_detects_staleness(ws):
    tmp, p = ws
    write_record(_record(42.0), p.root / "results" / "gpu-x" / "sweep.json")
    (p.root / "results" / "gpu-x" / "sweep.png").write_bytes(b"png")
    generate([p], [p], tmp, check=False)
    readme = (p.root / "README.md").read_text()
    assert "| 2 | 42.0 |" in readme
    assert "![a chart](results/gpu-x/sweep.png)" in readme
    post = (tmp / "blog" / "demo.md").read_text()
    assert post.startswith('---\ntitle: "Demo post"\n')
    assert "```python\ny = x + 1\n```" in post
    assert "Peak 42.0 GB/s on GPU X, torch 2.11, CUDA 13.0, commit 01234567." in post
    assert "[Demo post](demo.md): 42 GB/s (on gpu-x)" in (tmp / "blog" / "index.md").read_text()
    assert (
        "| [demo](projects/demo) | a demo | 42 GB/s (gpu-x) | [post](blog/demo.md) |" in (tmp / "README.md").read_text()
    )

    assert generate([p], [p], tmp, check=True) == []
    write_record(_record(43.0), p.root / "results" / "gpu-x" / "sweep.json")  # a new measurement lands
    before = (p.root / "README.md").read_text()
    stale = generate([p], [p], tmp, check=True)
    assert sorted(x.name for x in stale) == ["README.md", "README.md", "demo.md", "index.md"]
    assert (p.root / "README.md").read_text() == before  # --check writes nothing

    (tmp / "blog" / "demo.md").write_text("hand edit")  # and a hand edit is caught too
    generate([p], [p], tmp, check=False)
    assert generate([p], [p], tmp, check=True) == []


def test_unpublished_hardware_is_ignored(ws):
    tmp, p = ws
    rec = _record(1.0)
    d = rec.to_dict()
    d["hardware"] = "cpu-laptop"
    (p.root / "results" / "cpu-laptop").mkdir(parents=True)
    (p.root / "results" / "cpu-laptop" / "sweep.json").write_text(json.dumps(d))
    generate([p], [p], tmp, check=False)
    assert "nothing yet" in (p.root / "README.md").read_text()


def test_errors_name_the_problem(ws):
    tmp, p = ws
    write_record(_record(42.0), p.root / "results" / "gpu-x" / "sweep.json")
    with pytest.raises(FileNotFoundError, match="sweep.png"):  # the chart was never made
        generate([p], [p], tmp, check=True)
    (p.root / "templates" / "post.md").unlink()
    (p.root / "results" / "gpu-x" / "sweep.png").write_bytes(b"png")
    with pytest.raises(FileNotFoundError, match="missing template"):
        generate([p], [p], tmp, check=True)


def test_misfiled_result_is_refused(ws):
    tmp, p = ws
    write_record(_record(42.0), p.root / "results" / "gpu-x" / "other.json")
    with pytest.raises(ValueError, match="not what its path says"):
        generate([p], [p], tmp, check=True)


def test_workspace_root_is_found(ws):
    tmp, p = ws
    assert workspace_root(p.root / "src" / "demo") == tmp
