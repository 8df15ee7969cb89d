"""Figures (expertise.bench.figures) and markdown tables (expertise.bench.tables) from results."""

import math

import pytest

from expertise.bench.metrics import CI, group_means
from expertise.bench.figures import plot_group_means, plot_task_regret, plot_zero_regret
from expertise.bench.tables import Cost, cost_table, fmt_ci, group_table, markdown_table, regret_table
from expertise.errors import DataError

PNG = b"\x89PNG\r\n\x1a\n"
GROUPS = {"a": "natural", "b": "specialized", "c": "structured"}


def is_png(path):
    return path.exists() and path.read_bytes()[:8] == PNG


def test_plots_write_png_files_atomically(tmp_path):
    out = plot_zero_regret({"all": {"kNN": [0.3, 0.6, 1.0], "hybrid": [0.5, 0.8, 1.0]},
                            "experts": {"kNN": [0.4, 0.7, 1.0]}}, [1, 2, 3], tmp_path / "fig" / "zero.png", title="t")
    assert is_png(out)
    bars = plot_task_regret({"kNN B=1": {"a": 0.1, "b": 0.0, "c": 0.4}, "kNN B=2": {"a": 0.0, "c": 0.2}},
                            tmp_path / "regret.png", groups=GROUPS)
    assert is_png(bars)
    summary = group_means({"a": 0.8, "b": 0.7, "c": 0.4}, GROUPS, n_resamples=200)
    means = plot_group_means({"baseline": summary, "kNN": {"natural": (0.82, 0.80, 0.84), "all": (0.6, 0.5, 0.7)}},
                             tmp_path / "groups.png")
    assert is_png(means)
    assert not [p for p in tmp_path.rglob("*.tmp")]
    with pytest.raises(DataError):
        plot_zero_regret({"all": {"kNN": [0.1]}}, [1, 2], tmp_path / "bad.png")
    with pytest.raises(DataError):
        plot_task_regret({}, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_group_table_layout():
    rows = {"Baseline": {"natural": CI(0.774, 0.773, 0.776), "specialized": (0.816, 0.815, 0.82),
                         "structured": (0.572, 0.528, 0.582), "all": (0.698, 0.68, 0.702)},
            "kNN": {"natural": (0.797, math.nan, math.nan), "all": (math.nan,) * 3}}
    text = group_table(rows)
    lines = text.strip().splitlines()
    assert lines[0] == "| strategy | natural | specialized | structured | all |"
    assert lines[2] == "| Baseline | 77.4 [77.3, 77.6] | 81.6 [81.5, 82.0] | 57.2 [52.8, 58.2] | 69.8 [68.0, 70.2] |"
    assert lines[3] == "| kNN | 79.7 | – | – | – |"
    assert fmt_ci(0.5) == "50.0" and fmt_ci(None) == "–"


def test_regret_and_cost_tables():
    text = regret_table({"all": {"kNN": {1: 0.1234, 2: (0.05, 0.01, 0.09)}, "random": {1: 0.3}},
                         "experts": {"kNN": {1: 0.0, 3: 0.0}}})
    assert "| pool | strategy | B=1 | B=2 | B=3 |" in text
    assert "| all | kNN | 12.3 | 5.0 [1.0, 9.0] | – |" in text
    assert "| experts | kNN | 0.0 | – | 0.0 |" in text
    cost = cost_table({"kNN": Cost(2.0, 5000, 30.0, 40000, 300.0, 400000),
                       "random": {"selection_seconds": 0.0, "selection_images": 0, "finetune_seconds": 30.0,
                                  "finetune_images": 40000, "oracle_seconds": 300.0, "oracle_images": 400000}})
    assert "| kNN | 2.0 | 5,000 | 30.0 | 40,000 | 300 | 400,000 | 150x | 80x |" in cost
    assert "| random | 0.0 | 0 |" in cost and cost.count("–") == 2
    with pytest.raises(DataError, match="missing"):
        cost_table({"x": {"selection_seconds": 1.0}})
    with pytest.raises(DataError):
        markdown_table(["a", "b"], [["only one"]])
