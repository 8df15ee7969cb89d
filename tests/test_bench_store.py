"""The resumable record store (expertise.store): one atomic record per finished unit."""

import json

import pytest

from expertise.store import RecordStore, UnitResult
from expertise.errors import ConfigError, DataError


def test_put_get_and_key(tmp_path):
    store = RecordStore(tmp_path / "s")
    cfg = {"task": "count", "lr": 0.01, "grid": (1, 2)}
    assert store.get("finetune", cfg) is None and not store.has("finetune", cfg)
    key = store.key("finetune", cfg)
    assert key == store.key("finetune", {"grid": [1, 2], "lr": 0.01, "task": "count"})  # order, tuple/list
    assert key != store.key("finetune", {**cfg, "lr": 0.02}) and key != store.key("other", cfg)
    rec = store.put("finetune", cfg, {"accuracy": 0.75}, seconds={"finetune": 1.5}, images=800)
    assert rec["kind"] == "finetune" and rec["images"] == {"finetune": 800} and "versions" in rec
    path = tmp_path / "s" / "units" / f"finetune.{key}.json"
    assert path.exists() and json.loads(path.read_text())["metrics"] == {"accuracy": 0.75}
    assert RecordStore(tmp_path / "s").get("finetune", cfg) == {"accuracy": 0.75}  # a fresh process reads it
    assert [p.name for p in (tmp_path / "s" / "units").iterdir()] == [path.name]  # no temporary left


def test_run_unit_never_repeats_a_finished_unit(tmp_path):
    calls = []

    def work():
        calls.append(1)
        return UnitResult({"accuracy": 0.5}, images={"finetune": 10}, seconds={"finetune": 2.0})

    first = RecordStore(tmp_path).run_unit("finetune", {"x": 1}, work)
    again = RecordStore(tmp_path).run_unit("finetune", {"x": 1}, work)
    assert len(calls) == 1
    assert first.computed and not again.computed
    assert again.metrics == {"accuracy": 0.5} and again.total_seconds == 2.0 and again.total_images == 10
    # a plain metrics dict is accepted; its wall time is measured
    plain = RecordStore(tmp_path).run_unit("finetune", {"x": 2}, lambda: {"accuracy": 0.25})
    assert plain.computed and set(plain.seconds) == {"finetune"}


def test_interrupted_unit_is_redone(tmp_path):
    store = RecordStore(tmp_path)

    def killed():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.run_unit("finetune", {"x": 1}, killed)
    assert store.all() == []
    assert store.run_unit("finetune", {"x": 1}, lambda: {"accuracy": 1.0}).computed


def test_all_and_export(tmp_path):
    store = RecordStore(tmp_path)
    for i in range(3):
        store.put("finetune", {"i": i}, {"accuracy": i / 10})
    store.put("select", {"i": 0}, {"pick": "a"})
    assert len(store.all()) == 4 and len(store) == 4
    assert {r["config"]["i"] for r in store.all("finetune")} == {0, 1, 2}
    out = store.export_jsonl()
    lines = out.read_text().splitlines()
    assert out == tmp_path / "records.jsonl" and len(lines) == 4
    assert all(json.loads(line)["kind"] in ("finetune", "select") for line in lines)
    assert len(store.export_jsonl(tmp_path / "x.jsonl", kind="select").read_text().splitlines()) == 1


def test_errors(tmp_path):
    store = RecordStore(tmp_path)
    with pytest.raises(ConfigError, match="kind"):
        store.key("bad kind", {})
    with pytest.raises(ConfigError, match="plain JSON"):
        store.put("finetune", {"x": object()}, {})
    with pytest.raises(ConfigError, match="NaN"):
        store.put("finetune", {"x": 1}, {"accuracy": float("nan")})
    store.put("finetune", {"x": 1}, {"accuracy": 0.1})
    store.path("finetune", {"x": 1}).write_text("{not json")
    with pytest.raises(DataError, match="delete it"):
        store.get("finetune", {"x": 1})
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="folder"):
        RecordStore(tmp_path / "file")
