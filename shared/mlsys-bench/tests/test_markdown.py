import pytest
from mlsys_bench.markdown import excerpt, fmt, record_table, replace_section, table
from mlsys_bench.record import Record, metric, param


def test_fmt():
    assert fmt(None) == "n/a"
    assert fmt(4096) == "4096"
    assert fmt(3.14159) == "3.14"
    assert fmt(0.5, ".0%") == "50%"
    assert fmt("bf16") == "bf16"
    assert fmt(True) == "True"


def test_table_alignment():
    out = table(["name", "x"], [["a", 1.0], ["b", 2.0]])
    assert out.splitlines()[1] == "| :--- | ---: |"
    assert out.splitlines()[3] == "| b | 2.0 |"


def test_record_table_units_and_formats():
    rec = Record(
        project="p",
        benchmark="b",
        scale="cpu",
        hardware="h",
        environment={},
        ceilings=None,
        config={},
        timing={"method": "m", "warmup": 0, "repeats": 1, "flush_l2": False, "statistic": "median"},
        columns=(param("dtype"), metric("TFLOPs", "TFLOP/s")),
        rows=({"dtype": "bf16", "TFLOPs": 712.345}, {"dtype": "fp32", "TFLOPs": None}),
    )
    lines = record_table(rec, formats={"TFLOPs": ".1f"}).splitlines()
    assert lines[0] == "| dtype | TFLOPs (TFLOP/s) |"
    assert lines[2:] == ["| bf16 | 712.3 |", "| fp32 | n/a |"]


def test_replace_section_keeps_the_rest():
    text = "intro\n<!-- mlsys:results:begin -->\nold\n<!-- mlsys:results:end -->\noutro\n"
    out = replace_section(text, "results", "new table")
    assert out == "intro\n<!-- mlsys:results:begin -->\nnew table\n<!-- mlsys:results:end -->\noutro\n"
    assert replace_section(out, "results", "new table") == out


@pytest.mark.parametrize("text", ["no markers", "<!-- mlsys:results:begin -->" * 2 + "<!-- mlsys:results:end -->"])
def test_replace_section_needs_one_pair_of_markers(text):
    with pytest.raises(ValueError, match="README.md: needs exactly one"):
        replace_section(text, "results", "x", where="README.md")


def test_excerpt(tmp_path):
    src = tmp_path / "k.py"
    src.write_text("a = 1\n    # excerpt: core\n    def f(x):\n        return x\n    # end-excerpt\nb = 2\n")
    assert excerpt(src, "core") == "```python\ndef f(x):\n    return x\n```"
    cu = tmp_path / "k.cu"
    cu.write_text("// excerpt: tile\n__shared__ float t[32];\n// end-excerpt\n")
    assert excerpt(cu, "tile").startswith("```cuda\n__shared__")


def test_excerpt_errors(tmp_path):
    src = tmp_path / "k.py"
    src.write_text("# excerpt: open\nx = 1\n")
    with pytest.raises(ValueError, match="no 'end-excerpt'"):
        excerpt(src, "open")
    with pytest.raises(ValueError, match="found 0"):
        excerpt(src, "missing")
