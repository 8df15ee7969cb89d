"""The benchmark over several training seeds (expertise bench --seeds): the seeds' parsing, the three
named intervals and the paired differences against hand-computed bootstraps, the "Does choosing pay?"
figures on a folder of known accuracies, and a two-seed run of the CLI on the shared tiny library."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from expertise.bench import metrics
from expertise.bench.folder import write_task_meta
from expertise.bench.paired import pairs_of_interest, paired_difference
from expertise.bench.report import write_report
from expertise.bench.seeds import parse_seeds
from expertise.cli import app
from expertise.errors import ConfigError
from expertise.store import RecordStore

NAT = {"t1": "natural", "t2": "natural"}


def test_parse_seeds():
    assert parse_seeds("0,1,2") == (0, 1, 2) and parse_seeds(" 3, 1 ,") == (3, 1) and parse_seeds("7") == (7,)
    for bad, says in (("", "names no seed"), (" , ", "names no seed"), ("0,a", "'a' is not one"),
                      ("1.5", "'1.5' is not one"), ("0,1,0", "seed 0 twice"), ("-1", "non-negative")):
        with pytest.raises(ConfigError, match=says):
            parse_seeds(bad)


@pytest.mark.parametrize("seeds,says", [("", "names no seed"), ("0,x", "'x' is not one"), ("1,2,1", "seed 1 twice")])
def test_cli_refuses_bad_seeds_in_one_line_before_any_work(tmp_path, seeds, says):
    result = CliRunner().invoke(app, ["bench", "--library", str(tmp_path / "nowhere"), "--seeds", seeds,
                                      "--out", str(tmp_path / "out"), "--preset", "tiny", "-q"])
    assert result.exit_code == 2 and says in result.output
    assert [line for line in result.output.splitlines() if line.startswith("error:")] == [result.output.splitlines()[-1]]
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


# Two natural tasks, two seeds: differences 0 and 0.02 on t1, 0.04 and 0.04 on t2 (the example of the docs).
A = {"t1": {0: 0.50, 1: 0.52}, "t2": {0: 0.64, 1: 0.64}}
B = {"t1": {0: 0.50, 1: 0.50}, "t2": {0: 0.60, 1: 0.60}}


def test_paired_difference_against_the_hand_computed_two_level_bootstrap():
    # Tasks drawn with replacement (4 equally likely pairs), then each drawn task's two seeds drawn with
    # replacement: t1 gives 0 / 0.01 / 0.02 with probability 1/4, 1/2, 1/4, t2 always 0.04. The mean of the two
    # drawn tasks is 0 with probability 1/64 and 0.005 with 4/64 (so the 2.5% quantile is 0.005), and 0.04 with
    # 16/64 above a cumulative 48/64 (so the 97.5% quantile is 0.04). A bootstrap that gave a task drawn twice
    # the same seed resample would put 1/16 on 0; one over tasks alone gives [0.01, 0.04].
    p = paired_difference(A, B, NAT, "a", "b", n_resamples=20_000, seed=3)
    nat = p.summary["natural"]
    assert nat.estimate == pytest.approx(0.025, abs=1e-12)
    assert (nat.lo, nat.hi) == (pytest.approx(0.005, abs=1e-12), pytest.approx(0.04, abs=1e-12))
    assert p.above_zero("natural") and not p.below_zero("natural") and p.pairs["natural"] == 4
    assert p.name == "a - b" and np.isnan(p.summary["structured"].estimate)
    flipped = paired_difference(B, A, NAT, "b", "a", n_resamples=20_000, seed=3)
    assert flipped.below_zero("natural") and flipped.summary["natural"].hi == pytest.approx(-0.005, abs=1e-12)
    js = p.to_json()
    assert js["natural"]["above_zero"] is True and js["structured"] is None and js["all"]["pairs"] == 4


def test_the_three_interval_kinds_by_hand():
    runs = {"t1": [0.0, 0.02], "t2": [0.04, 0.04]}

    def ci(kind):
        c = metrics.group_means(runs, NAT, 20_000, seed=1, resample=kind, per_task_stat=np.mean)["natural"]
        return round(c.lo, 12), round(c.hi, 12)

    assert ci("tasks") == (0.01, 0.04)    # per-task means 0.01 and 0.04, tasks resampled
    assert ci("runs") == (0.02, 0.03)     # t1's seeds resampled (0, 0.01, 0.02), t2 fixed at 0.04
    assert ci("both") == (0.005, 0.04)


def test_pairs_of_interest_put_knn_minus_random_first_and_name_each_pair_once():
    names = ["knn_loo", "label_matching", "task_agnostic", "random", "oracle", "worst member", "B",
             "knn_loo in full_experts"]
    pairs = pairs_of_interest(names)
    assert pairs[0] == ("knn_loo", "random")
    assert {("label_matching", "random"), ("task_agnostic", "random"), ("knn_loo", "task_agnostic"),
            ("label_matching", "task_agnostic"), ("knn_loo", "label_matching"), ("oracle", "random"),
            ("oracle", "worst member"), ("knn_loo in full_experts", "B")} <= set(pairs)
    assert len(pairs) == len(set(pairs)) and not any((b, a) in pairs for a, b in pairs)
    assert all(a in names and b in names for a, b in pairs)


# A folder of known accuracies: B and two full experts (glyph, shape), two natural tasks and a structured one,
# seeds 0 and 1. kNN and domain prediction pick as listed; task_agnostic always picks B.
ACC = {  # task -> member -> (seed 0, seed 1)
    "n1": {"B": (0.50, 0.52), "eg": (0.70, 0.72), "es": (0.30, 0.30)},
    "n2": {"B": (0.60, 0.60), "eg": (0.40, 0.40), "es": (0.80, 0.84)},
    "s1": {"B": (0.50, 0.50), "eg": (0.50, 0.52), "es": (0.50, 0.50)},
}
GROUP = {"n1": "natural", "n2": "natural", "s1": "structured"}
PICK = {"knn_loo": {"n1": "eg", "n2": "es", "s1": "B"}, "label_matching": {"n1": "B", "n2": "es", "s1": "B"},
        "domain_prediction": {"n1": "eg", "n2": "B", "s1": "B"}, "task_agnostic": {"n1": "B", "n2": "B", "s1": "B"}}
KIND = {"B": "baseline", "eg": "full_expert", "es": "full_expert"}
DOMAIN = {"B": None, "eg": "glyph", "es": "shape"}


def _folder(out, seeds=(0, 1)):
    store = RecordStore(out)
    pools = {"all": ["B", "eg", "es"], "full_experts": ["eg", "es"]}
    for s_i, seed in enumerate(seeds):
        for task, accs in ACC.items():
            for m, a in accs.items():
                store.put("protocol", {"task": task, "group": GROUP[task], "member": m, "seed": seed,
                                       "info": {"kind": KIND[m], "domain": DOMAIN[m]}},
                          {"test_accuracy": a[s_i], "test_accuracies": [a[s_i]], "seconds": 1.0, "images": 10,
                           "phase_seconds": {"retrain": 1.0}, "phase_images": {"retrain": 10}})
            for p, (pool, members) in enumerate(pools.items()):
                for s, strategy in enumerate(["knn_loo", "label_matching", "domain_prediction", "task_agnostic", "random"]):
                    if pool != "all" and strategy != "knn_loo":
                        continue
                    pick = PICK.get(strategy, {}).get(task, members[0])
                    pick = pick if pick in members else max(members, key=lambda m: accs[m][s_i])
                    ranking = [[pick, 1.0]] + [[m, 0.0] for m in members if m != pick]
                    store.put("selection", {"task": task, "group": GROUP[task], "pool": pool, "strategy": strategy,
                                            "kind": "proxy" if strategy == "knn_loo" else strategy, "seed": seed,
                                            "members": {m: m for m in members}, "order": [p, s]},
                              {"ranking": ranking, "picks": [pick], "members_embedded": []}, seconds={"score": 0.1})
    write_task_meta(out, {"n1": {"group": "natural", "domain": "glyph"}, "n2": {"group": "natural", "domain": "shape"},
                          "s1": {"group": "structured", "domain": "shape"}})
    return store


def _mean_over_tasks(per_task_seed):
    return float(np.mean([np.mean(v) for v in per_task_seed.values()]))


def test_does_choosing_pay_reads_the_known_accuracies(tmp_path):
    _folder(tmp_path)
    text = write_report(tmp_path, n_resamples=2_000).read_text()
    checks = {c["what"]: c for c in json.loads((tmp_path / "summary.json").read_text())["does_choosing_pay"]}
    nat = ["n1", "n2"]
    acc = lambda t, m, i: ACC[t][m][i]  # noqa: E731
    expected_random = {t: [np.mean([acc(t, m, i) for m in ACC[t]]) for i in (0, 1)] for t in ACC}
    oracle = {t: [max(acc(t, m, i) for m in ACC[t]) for i in (0, 1)] for t in ACC}
    worst = {t: [min(acc(t, m, i) for m in ACC[t]) for i in (0, 1)] for t in ACC}
    pick = lambda s, t, i: acc(t, PICK[s][t], i)  # noqa: E731

    c = checks["oracle - expected random pick, natural tasks"]
    assert c["mean"] == pytest.approx(_mean_over_tasks({t: np.subtract(oracle[t], expected_random[t]) for t in nat}))
    assert c["met"] is True and c["pairs"] == 4 and c["lo"] <= c["mean"] <= c["hi"]
    c = checks["oracle - worst member, natural tasks"]
    assert c["mean"] == pytest.approx(_mean_over_tasks({t: np.subtract(oracle[t], worst[t]) for t in nat}))
    c = checks["kNN - label matching, natural tasks"]
    assert c["mean"] == pytest.approx(_mean_over_tasks(
        {t: [pick("knn_loo", t, i) - pick("label_matching", t, i) for i in (0, 1)] for t in nat})) and c["met"] is True
    c = checks["kNN - random, natural tasks"]
    assert c["met"] is True and c["lo"] > 0  # kNN finds the best member on both natural tasks, at both seeds
    assert checks["kNN - random, structured tasks"]["met"] is True
    c = next(v for k, v in checks.items() if k.startswith("kNN among full experts - B"))
    assert "(2)" in c["what"] and c["mean"] == pytest.approx(0.21) and c["met"] is True
    c = checks["kNN's mean relative regret at budget 1 / random's, pool all"]
    rel = lambda v, o: (o - v) / (1 - v)  # noqa: E731
    knn = np.mean([rel(pick("knn_loo", t, i), oracle[t][i]) for t in ACC for i in (0, 1)])
    rnd = np.mean([rel(expected_random[t][i], oracle[t][i]) for t in ACC for i in (0, 1)])
    assert c["knn"] == pytest.approx(knn) and c["random"] == pytest.approx(rnd) and c["ratio"] == pytest.approx(knn / rnd)
    assert c["met"] is True
    assert "## Does choosing pay?" in text and "| knn_loo - random | +20.8 [" in text
    for kind in ("over tasks", "over repeated runs within each task", "over tasks and runs"):
        assert f"(pool `all`, budget 1), intervals {kind}" in text
    assert "## Per task: median over seeds [lowest, highest]" in text
    assert "| n2 | natural | 82.0 [80.0, 84.0] |" in text  # kNN's pick: es at 0.80 and 0.84


def test_a_folder_of_one_seed_keeps_the_single_seed_report(tmp_path):
    _folder(tmp_path, seeds=(0,))
    text = write_report(tmp_path, n_resamples=500).read_text()
    assert text.count("## Table 1 layout") == 1 and ", intervals over" not in text
    assert "Group means with 95% percentile-bootstrap intervals over tasks" in text
    assert "median over seeds" not in text and "## Does choosing pay?" in text
    assert json.loads((tmp_path / "summary.json").read_text())["seeds"] == [0]


@pytest.mark.slow
def test_cli_bench_two_seeds_on_the_tiny_library(tiny_library, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "out"
    args = ["bench", "--library", str(tiny_library.library.path), "--suite", "glyph_digits", "--pool", "full_experts",
            "--pool", "baseline",
            "--strategy", "knn_loo", "--strategy", "random", "--strategy", "task_agnostic", "--out", str(out),
            "--cache", str(tmp_path / "cache"), "--preset", "tiny", "--set", "finetune.steps=2",
            "--set", "finetune.warmup_steps=1", "-q"]
    result = CliRunner().invoke(app, [*args, "--seeds", "0,1"])
    assert result.exit_code == 0, result.output
    store = RecordStore(out)
    protocols = store.all("protocol")
    by_seed = {s: sorted(r["config"]["member"] for r in protocols if r["config"]["seed"] == s) for s in (0, 1)}
    assert by_seed[0] == by_seed[1] and len(by_seed[0]) == 4 and len(protocols) == 8  # B and three full experts
    assert {r["config"]["seed"] for r in store.all("selection")} == {0, 1}
    assert {r["config"]["seed"] for r in store.all("transfer_retrain")} == {0, 1}
    assert len(store.all("embed")) == 5  # shared by both seeds: four members and the EPN, once each
    retrains = {(r["config"]["member"], r["config"]["seed"]): r["config"]["unit_seed"] for r in store.all("transfer_retrain")}
    assert all(retrains[(m, 0)] != retrains[(m, 1)] for m, _ in retrains)  # each seed trains with its own stream
    text = (out / "summary.md").read_text()
    assert "2 training seeds (0, 1)" in text and "intervals over repeated runs within each task" in text
    assert "intervals over tasks\n" in text and "## Does choosing pay?" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and set(summary["table1"]) == {"tasks", "runs", "both"}
    assert json.loads((out / "tasks.json").read_text())["tasks"]["glyph_digits"] == {"group": "natural", "domain": "glyph"}
    again = CliRunner().invoke(app, [*args, "--seeds", "1"])  # a seed already run: nothing is repeated
    assert again.exit_code == 0, again.output
    assert len(RecordStore(out).all("protocol")) == 8
