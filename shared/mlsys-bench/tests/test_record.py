import copy
import json

import pytest
from mlsys_bench.record import SCHEMA, Record, RecordError, metric, param, read_record, validate, write_record


def make_record(**over):
    fields = dict(
        project="demo",
        benchmark="sweep",
        scale="cpu",
        hardware="cpu-test",
        environment={"command": "mlsys bench demo"},
        ceilings=None,
        config={"sizes": [1, 2]},
        timing={
            "method": "perf-counter",
            "warmup": 1,
            "repeats": 3,
            "flush_l2": False,
            "statistic": "median",
        },
        columns=(param("n"), metric("GBps", "GB/s"), metric("ms", "ms")),
        rows=({"n": 1, "GBps": 10.5, "ms": 0.1}, {"n": 2, "GBps": None, "ms": 0.2}),
    )
    fields.update(over)
    return Record(**fields)


def test_round_trip(tmp_path):
    rec = make_record()
    path = write_record(rec, tmp_path / "r" / "sweep.json", csv_too=True)
    assert read_record(path) == rec
    assert json.loads(path.read_text())["schema"] == SCHEMA
    csv = (tmp_path / "r" / "sweep.csv").read_text().splitlines()
    assert csv[0] == "n,GBps [GB/s],ms [ms]" and csv[2] == "2,,0.2"


def test_lookup_helpers():
    rec = make_record()
    assert rec.value("GBps", n=1) == 10.5
    assert rec.where(n=2)[0]["ms"] == 0.2
    with pytest.raises(KeyError, match="no column"):
        rec.where(bogus=1)
    with pytest.raises(KeyError, match="0 rows"):
        rec.value("GBps", n=3)


def _mutated(path, value):
    d = make_record().to_dict()
    target = d
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return d


@pytest.mark.parametrize(
    "path, value, message",
    [
        (("schema",), "other/9", "schema"),
        (("project",), KeyError, "missing field"),
        (("scale",), "tpu", "scale"),
        (("hardware",), "a/b", "hardware"),
        (("config",), [], "config: expected dict"),
        (("timing", "repeats"), "many", "timing.repeats"),
        (("columns", 1, "kind"), "result", r"columns\[1\].kind"),
        (("columns", 2, "name"), "GBps", "repeated column"),
        (("rows", 0, "GBps"), "fast", r"rows\[0\].GBps"),
        (("rows", 1, "n"), [1], r"rows\[1\].n"),
        (("rows", 1, "ms"), KeyError, r"rows\[1\]: missing \['ms'\]"),
        (("rows", 0, "GBps"), float("inf"), "finite"),
        (("rows", 0, "GBps"), True, "number or null"),
        (("extra",), 1, "unknown field"),
    ],
)
def test_validation_names_the_field(path, value, message):
    with pytest.raises(RecordError, match=message):
        validate(_mutated(path, value))


def test_record_constructor_validates():
    with pytest.raises(RecordError, match="scale"):
        make_record(scale="quantum")


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no result file"):
        read_record(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(RecordError, match="bad.json: not valid JSON"):
        read_record(bad)
    d = copy.deepcopy(make_record().to_dict())
    d["rows"][0]["GBps"] = "x"
    bad.write_text(json.dumps(d))
    with pytest.raises(RecordError, match=r"bad.json: rows\[0\].GBps"):
        read_record(bad)


def test_write_is_atomic_and_leaves_no_temp_file(tmp_path):
    write_record(make_record(), tmp_path / "x.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]
