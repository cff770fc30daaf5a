"""adafuse_lab.traces, stats, tables, plans and the run store: trace rows, recomputed thresholds, AUROC, reliability, costs, runs."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from adafuse_lab import plans, stats, tables, traces
from adafuse_lab import runs as R


@pytest.fixture(scope="module")
def tiny_pair():
    from adafuse_lab.models import load_session
    return [load_session("tiny:bpe"), load_session("tiny:spm")]


def member(conf, theta=0.7, branched=None, words=None, tokens=3, forwards=4):
    conf = list(conf)
    if branched is None:
        branched = bool(conf) and conf[-1] < theta
    if words is None:
        words = sum(c >= theta for c in conf)
    return {"conf": conf, "margin": conf, "entropy": [min(1.0, c + 0.1) for c in conf], "theta": [theta] * len(conf),
            "words": words, "branched": branched, "tokens": tokens, "forwards": forwards}


def cand(text, frm, eos=False, nll=(1.0, 1.0)):
    return {"text": text, "eos": eos, "from": frm, "nll": list(nll), "score": sum(nll) / len(nll)}


# Round 0: member 0 confident for 2 words then branches; member 1 confident for 3 words (M = 3).
# Member 1's span wins; nothing was proposed by both: a split.
# Round 1: both members uncertain at once (branch); they share the winning word.
TRACE = [
    {"members": [member([0.9, 0.8, 0.2]), member([0.95, 0.9, 0.75], branched=False, words=3)],
     "candidates": [cand(" the big cat", [0], nll=(0.5, 2.0)), cand(" the big dog", [0], nll=(0.9, 1.9)),
                    cand(" the big red", [1], nll=(0.8, 0.4))],
     "winner": 2},
    {"members": [member([0.1]), member([0.3])],
     "candidates": [cand(" fox", [0, 1]), cand(" hen", [0]), cand(" owl", [1])],
     "winner": 0},
]


def test_round_rows():
    rows = traces.round_rows(TRACE, id="x")
    assert [r["span_words"] for r in rows] == [3, 1]
    assert [r["triggered"] for r in rows] == [True, True]
    assert [r["n_branched"] for r in rows] == [1, 2]
    assert [r["split"] for r in rows] == [True, False]
    assert [r["shared_win"] for r in rows] == [False, True]
    assert rows[0]["min_conf0"] == 0.9 and rows[1]["min_conf0"] == 0.1
    assert rows[0]["tokens"] == 6 and rows[0]["forwards"] == 8
    # round 0: member 0 liked " the big cat" best (0.5 < 0.8) and lost; in round 1 all NLLs tie
    assert [r["overruled"] for r in rows] == [[0], []]
    assert all(r["id"] == "x" for r in rows)
    assert traces.round_rows(None) == []
    # top-1 words: round 0 only member 0 branched (its top-1 " the big cat" is also its favourite,
    # and lost); round 1 member 1's top-1 is unknown (no "proposed", not the first member)
    assert [r["branched_top1"] for r in rows] == [[0], [0]]
    assert [r["favourite_not_top1"] for r in rows] == [[], []]
    assert [r["top1_lost"] for r in rows] == [[0], []]


def test_top1_from_proposed():
    rd = {"members": [member([0.2]), member([0.1])],
          "candidates": [cand(" a", [0], nll=(0.9, 2.0)), cand(" b", [0, 1], nll=(0.5, 0.7)),
                         cand(" c", [1], nll=(3.0, 0.6))],
          "winner": 1}
    rd["members"][0]["proposed"], rd["members"][1]["proposed"] = [0, 1], [2, 1]
    assert [traces.top1_candidate(rd, k) for k in (0, 1)] == [0, 2]
    row = traces.round_rows([rd])[0]
    # member 0: top-1 " a" but favourite " b" (0.5 < 0.9); member 1: top-1 " c" is its favourite
    assert row["branched_top1"] == [0, 1] and row["favourite_not_top1"] == [0] and row["top1_lost"] == [0, 1]
    run = R.Run(path=None, config={}, results={}, records=[{"id": "x", "trace": [rd, rd]}])
    table = tables.top1_table({("adafuse", "t"): run}, ["t"], "adafuse", ["a", "b"])
    assert table == [{"task": "t", "member": "a", "branched_rounds": 2, "favourite_not_top1": 1.0, "top1_lost": 1.0},
                     {"task": "t", "member": "b", "branched_rounds": 2, "favourite_not_top1": 0.0, "top1_lost": 1.0}]


def test_member_rounds_lost_and_split():
    rows = traces.member_rounds(TRACE, ["a", "b"], task="t")
    assert [(r["round"], r["member"], r["lost"]) for r in rows] == [(0, 0, True), (0, 1, False), (1, 0, False),
                                                                     (1, 1, False)]
    assert rows[0]["conf"] == 0.9 and rows[0]["min_conf"] == 0.2 and rows[0]["n_starts"] == 3
    assert rows[0]["member_name"] == "a" and rows[0]["task"] == "t"
    assert rows[0]["split"] and not rows[2]["split"]


def test_word_rows_actions():
    rows = traces.word_rows(TRACE)
    assert len(rows) == 3 + 3 + 1 + 1
    assert [r["action"] for r in rows[:3]] == ["commit", "commit", "branch"]
    assert [r["action"] for r in rows[3:6]] == ["commit"] * 3
    assert [r["j"] for r in rows[:3]] == [0, 1, 2]


def test_run_rows_over_records():
    recs = [{"id": "a", "trace": TRACE, "stats": {"members": ["m0", "m1"]}}, {"id": "b", "trace": None}]
    assert len(traces.run_rows(recs, "rounds")) == 2
    mr = traces.run_rows(recs, "members", task="t")
    assert {r["member_name"] for r in mr} == {"m0", "m1"} and all(r["id"] == "a" for r in mr)
    assert len(traces.run_rows(recs, "words")) == 8
    df = traces.frame(mr)
    assert list(df["member"]) == [0, 1, 0, 1]


def test_n_words():
    assert traces.n_words(" the big cat") == 3
    assert traces.n_words(" = 5") == 1          # punctuation joins the next word
    assert traces.n_words("") == 0
    assert traces.n_words(" ...") == 1


# ------------------------------------------------------------------ thresholds


def test_trigger_curve_monotone():
    conf = np.random.default_rng(0).random(200)
    th = np.linspace(0, 1, 21)
    c = traces.trigger_curve(conf, th)
    assert c[0] == 0.0 and c[-1] == 1.0
    assert np.all(np.diff(c) >= 0)
    assert np.isnan(traces.trigger_curve([], [0.5])).all()


def test_round_triggers_reproduce_branching():
    assert traces.round_triggers(TRACE, 0.7) == [r["triggered"] for r in traces.round_rows(TRACE)]
    assert traces.round_triggers(TRACE, 0.05) == [False, False]
    assert traces.round_triggers(TRACE, 0.92) == [True, True]
    assert list(traces.round_trigger_curve([TRACE, None], [0.05, 0.7])) == [0.0, 1.0]


def test_round_triggers_on_a_real_trace(tiny_pair):
    """At the theta it was decoded with, recomputing from the trace gives exactly the branching."""
    from adafuse_lab.decoding import DecodeConfig, decode
    for theta in (0.3, 0.7):
        out = decode("adafuse", tiny_pair, ["Question: what is two plus two?\nAnswer:"],
                     DecodeConfig(theta=theta, max_new_tokens=10))[0]
        assert out.trace
        assert traces.round_triggers(out.trace, theta) == [any(m["branched"] for m in rd["members"]) for rd in out.trace]


def test_probe_path_and_simulation():
    probe = [{"members": [member([c0]), member([c1])], "candidates": [cand(" a", [0, 1])], "winner": 0}
             for c0, c1 in [(0.9, 0.8), (0.9, 0.9), (0.9, 0.2), (0.9, 0.9), (0.1, 0.1)]]
    path = traces.probe_path(probe)
    assert path.shape == (5, 2)
    # theta 0: everybody always confident: spans of M words
    s = traces.simulate_commitment(path, 0.0, M=3)
    assert s == {"rounds": 2, "words": 5, "triggered": 0, "spans": [3, 2]}
    # theta above every confidence: one word per round, every round triggered
    s = traces.simulate_commitment(path, 0.99, M=3)
    assert s["spans"] == [1] * 5 and s["triggered"] == 5
    # theta 0.5: member 0 confident on words 0-2 (3 words), member 1 uncertain at word 2 -> branches;
    # member 0 leads at word 0 (0.9 > 0.8) so its 3 words win; then word 3..4: member 0 commits
    # word 3 and branches at word 4 (span 2)
    s = traces.simulate_commitment(path, 0.5, M=3)
    assert s["spans"] == [3, 2] and s["triggered"] == 2
    c = traces.commitment_curve([path, np.zeros((0, 2))], [0.0, 0.5, 0.99], M=3)
    assert c["rounds_per_word"] == [pytest.approx(2 / 5), pytest.approx(2 / 5), 1.0]
    assert c["mean_span"][0] == pytest.approx(2.5)
    assert c["trigger_rate"] == [0.0, 1.0, 1.0]


# ------------------------------------------------------------------ prediction quality


def brute_auc(s, y):
    pos = [a for a, l in zip(s, y) if l]
    neg = [a for a, l in zip(s, y) if not l]
    return np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)])


def test_auroc_rank_formula():
    assert stats.auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert stats.auroc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    assert stats.auroc([0.5] * 4, [0, 1, 0, 1]) == 0.5
    assert math.isnan(stats.auroc([0.1, 0.2], [1, 1]))
    assert stats.auroc([0.1, float("nan"), 0.9], [0, 1, 1]) == 1.0  # NaN scores dropped
    rng = np.random.default_rng(1)
    for _ in range(5):
        s = rng.integers(0, 6, 40).astype(float)  # many ties
        y = rng.random(40) < 0.4
        assert stats.auroc(s, y) == pytest.approx(brute_auc(s, y))


def test_reliability_and_ece():
    bins = stats.reliability([0.05, 0.15, 0.95, 0.97, 1.0], [0, 0, 1, 1, 0], n_bins=10)
    assert [b["bin"] for b in bins] == [0, 1, 9]
    assert bins[-1]["n"] == 3 and bins[-1]["rate"] == pytest.approx(2 / 3)
    assert sum(b["n"] for b in bins) == 5
    rng = np.random.default_rng(0)
    c = rng.random(20000)
    calibrated = stats.reliability(c, rng.random(20000) < c, n_bins=10)
    assert stats.ece(calibrated) < 0.02
    assert stats.ece(stats.reliability(c, np.zeros(20000), 10)) == pytest.approx(c.mean(), abs=0.01)


def test_catch_curve():
    c = stats.catch_curve([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0])
    assert c["trigger_rate"][0] == 0.0 and c["trigger_rate"][-1] == 1.0
    assert c["recall"][-1] == 1.0
    i = c["theta"].index(0.8)  # triggers below 0.8: the two lost words, nothing else
    assert c["trigger_rate"][i] == 0.5 and c["recall"][i] == 1.0


def test_uncertainty_table():
    df = traces.frame(traces.member_rounds(TRACE * 3, ["a", "b"], task="t"))
    t = stats.uncertainty_table(df)
    assert list(t["member_name"]) == ["a", "b"]
    assert t.loc[0, "lost rate"] == pytest.approx(0.5)
    assert t.loc[0, "AUROC lost | margin"] == 0.0  # member a lost at its HIGH confidence here
    assert math.isnan(t.loc[1, "AUROC lost | margin"])  # b never lost


# ------------------------------------------------------------------ metrics, costs, tables


def qa_records(scores, prefix="triviaqa"):
    return [{"id": f"{prefix}-{i}", "answer": "x", "references": ["x"], "prediction": " x y",
             "metrics": {"lenient": s, "exact_match": s, "f1": s},
             "stats": {"forwards": [3, 4], "tokens": [2, 2], "rounds": 2}, "trace": None}
            for i, s in enumerate(scores)]


def test_score_ci_and_paired_diff():
    ci = stats.score_ci("triviaqa", qa_records([1, 0, 1, 1]), "lenient", n_boot=200)
    assert ci["value"] == 75.0 and ci["low"] <= 75.0 <= ci["high"] and ci["n"] == 4
    d = stats.paired_diff("triviaqa", qa_records([1, 1, 1, 1]), qa_records([1, 0, 1, 1]), "lenient", n_boot=200)
    assert d["diff"] == 25.0 and d["n"] == 4
    mt = [{"id": str(i), "answer": h, "references": [r]} for i, (h, r) in
          enumerate([("the cat sat", "the cat sat"), ("a dog", "the dog ran")])]
    ci = stats.score_ci("flores_en-de", mt, "bleu", n_boot=50)
    assert 0 <= ci["low"] <= ci["high"] <= 100 and ci["n"] == 2
    assert math.isnan(stats.score_ci("flores_en-de", mt, "spbleu")["value"])
    assert math.isnan(stats.score_ci("triviaqa", [], "lenient")["value"])


def test_metric_keys_and_headline():
    assert stats.metric_keys("gsm8k")["example"] == "exact_match"
    assert stats.metric_keys("nq")["paper"] == "lenient"
    assert stats.headline_key("flores_de-en", {"metrics": {"spbleu": None}}) == "bleu"
    assert stats.headline_key("flores_de-en", {"metrics": {"spbleu": 30.0}}) == "spbleu"


def test_cost_uses_trace_tokens():
    recs = qa_records([1, 0])
    c = tables.cost(recs, {"timings": {"decode_s": 4.0, "n_decoded": 2}})
    assert c == {"forwards": 7.0, "tokens": 4.0, "rounds": 2.0, "words": 2.0, "seconds": 2.0}
    recs[0]["trace"] = TRACE
    assert tables.cost(recs)["tokens"] == (12 + 4) / 2  # trace: 4 members x 3 tokens; stats: 2 + 2
    assert math.isnan(tables.cost([])["forwards"])


def test_measured_point_and_per_example_trigger():
    recs = [{"id": "a", "trace": TRACE}, {"id": "b", "trace": TRACE[1:]}]
    m = traces.measured_point(recs, 0.7)
    assert m["rounds"] == 3 and m["words"] == 5 and m["trigger_rate"] == 1.0
    assert m["mean_span"] == pytest.approx(5 / 3)
    assert list(traces.per_example_trigger(recs + [{"id": "c", "trace": None}])) == [1.0, 1.0]


def test_diff_ci_and_claim():
    d = stats.diff_ci([1, 1, 1, 1], [0, 0, 0, 0], n=100)
    assert d == {"diff": 1.0, "low": 1.0, "high": 1.0}
    claim = stats.claim_by_kind({"gsm8k": [0.9, 0.8], "triviaqa": [0.1, 0.2], "flores_en-de": [0.3]},
                            {"gsm8k": "math", "triviaqa": "qa", "flores_en-de": "mt"}, n_boot=100)
    assert set(claim["by_kind"]) == {"math", "qa", "mt"}
    assert claim["math_minus_qa"]["diff"] == pytest.approx(0.7)
    assert claim["math_minus_mt"]["low"] > 0


def test_benchmark_table():
    runs = {("single: a", "triviaqa"): R.Run(None, {"task": "triviaqa"}, {"metrics": {}}, qa_records([1, 0])),
            ("adafuse", "triviaqa"): R.Run(None, {"task": "triviaqa"}, {"metrics": {}}, qa_records([1, 1])),
            ("adafuse", "nq"): R.Run(None, {"task": "nq"}, {"metrics": {}}, qa_records([0, 1], "nq"))}
    t = tables.benchmark_table(runs, ["triviaqa", "nq"], ["single: a", "adafuse"], n_boot=50)
    assert t.loc["adafuse", "triviaqa"] == 100.0 and t.loc["adafuse", "nq"] == 50.0
    assert t.loc["adafuse", "Avg"] == 75.0
    assert math.isnan(t.loc["single: a", "nq"]) and math.isnan(t.loc["single: a", "Avg"])
    # a task no row has yet (a partial table) leaves Avg alone
    t3 = tables.benchmark_table(runs, ["triviaqa", "nq", "squad"], ["single: a", "adafuse"], n_boot=50)
    assert t3.loc["adafuse", "Avg"] == 75.0 and math.isnan(t3.loc["adafuse", "squad"])
    assert t.loc["adafuse", "forwards/ex"] == 7.0
    f = tables.format_table(t, ["triviaqa", "nq"])
    assert f.loc["single: a", "nq"] == "–" and f.loc["adafuse", "triviaqa"].startswith("100.0 [")
    # paired differences: only tasks both runs have; in report units (percent)
    (row,) = tables.paired_rows(runs, ["triviaqa", "nq"], "adafuse", "single: a", n_boot=200)
    assert row["task"] == "triviaqa" and row["diff"] == 50.0 and row["n"] == 2 and row["low"] <= 50.0 <= row["high"]


def test_plans():
    v = plans.ablation_variants(0.7, 3, 3, [1, 2, 3, 5], ["topk", "distinct"], 3)
    assert [x["label"] for x in v] == ["B=3", "B=1 (no scaling)", "B=2", "B=5", "distinct B=3", "fixed 3 words"]
    assert v[-1]["decode"]["span_words"] == 3 and v[-2]["key"] == "adafuse-distinct"
    assert len(plans.ablation_variants(0.7, 3, 3, [3], ["topk"], None)) == 1
    p = plans.benchmark_plan(["single", "adafuse"], ["m0", "m1"])
    assert [x["label"] for x in p] == ["single: m0", "single: m1", "adafuse"]
    assert p[1]["models"] == ["m1"] and p[2]["models"] == ["m0", "m1"]


# ------------------------------------------------------------------ run directories


def test_canonical_decode_and_run_dir(tmp_path):
    assert R.canonical_decode({"theta": 0.7, "M": 3, "B": 1, "weights": [1, 2]}) == {"B": 1, "weights": [1, 2]}
    kw = dict(limit=2, source="sample", max_new_tokens=8)
    a = R.run_config("triviaqa", "tiny:bpe,tiny:spm", "adafuse", {"theta": 0.7}, **kw)
    b = R.run_config("triviaqa", "tiny:bpe,tiny:spm", "adafuse", {}, batch_size=1, **kw)
    c = R.run_config("triviaqa", "tiny:bpe,tiny:spm", "adafuse", {"B": 1}, **kw)
    assert R.run_dir(tmp_path, a) == R.run_dir(tmp_path, b)  # defaults and batch size do not matter
    assert R.run_dir(tmp_path, a) != R.run_dir(tmp_path, c)
    d = R.run_config("triviaqa", "tiny:bpe,tiny:spm", "adafuse", {"B": 1, "batches_in_flight": 3}, **kw)
    assert R.run_dir(tmp_path, d) == R.run_dir(tmp_path, c)  # nor batches in flight (same bytes)
    assert R.run_dir(tmp_path, c).parent == tmp_path / "triviaqa"
    assert R.run_dir(tmp_path, c).name.startswith("adafuse_B1-")


def test_ensure_run_launches_once(tmp_path):
    cfg = R.run_config("triviaqa", "tiny:bpe,tiny:spm", "adafuse", {}, limit=1, source="sample", max_new_tokens=4)
    logs = []
    assert R.ensure_run(cfg, tmp_path, launch=False, log=logs.append) is None
    run = R.ensure_run(cfg, tmp_path, launch=True, log=logs.append)
    assert run.results["n_examples"] == 1 and len(run.records) == 1 and run.records[0]["trace"]
    again = R.ensure_run(cfg, tmp_path, launch=False, log=logs.append)
    assert again.records == run.records
    assert [line.split()[0] for line in logs] == ["missing", "decoded", "found"]
    assert [r.path for r in R.find_runs(tmp_path)] == [run.path]


def test_presets_fill_what_is_left_at_none(capsys):
    cpu = plans.notebook_params("03_diversity_ablations", "cpu", models=None, limit=None, theta=0.5, fixed_span=3)
    assert cpu.preset == "cpu" and cpu.models == ("tiny:bpe", "tiny:spm") and cpu.limit == 4 and cpu.theta == 0.5
    assert "preset cpu" in capsys.readouterr().out
    gpu = plans.notebook_params("03_diversity_ablations", "gpu", limit=7)
    assert gpu.models == ("qwen2.5-coder-0.5b", "smollm2-135m") and gpu.limit == 7  # a value overrides the preset
    assert plans.notebook_params("04_full_benchmark", "gpu", limit="all").limit is None
    assert plans.notebook_params("00_quickstart", "auto").preset in ("cpu", "gpu")
    with pytest.raises(ValueError, match="preset"):
        plans.notebook_params("00_quickstart", "laptop")
    with pytest.raises(ValueError, match="no notebook"):
        plans.notebook_params("05_more", "cpu")
    # figures into the run folder unless fig_dir is given
    assert gpu.dirs.__doc__ and plans.NotebookParams(out_dir="o").fig_dir is None


def test_run_plans_are_declared(tmp_path):
    P = plans.notebook_params("01_uncertainty_analysis", "cpu")
    plan = plans.runs_of("01_uncertainty_analysis", P)
    assert set(plan) == {(kind, t, *m) for t in P.tasks for kind, m in
                         [("probe", ())] + [("alone", (x,)) for x in P.models]}
    assert plans.runs_of("00_quickstart", plans.notebook_params("00_quickstart", "cpu")) == {}
    P2 = plans.notebook_params("02_trigger_rates", "cpu")
    assert {k[2] for k in plans.runs_of("02_trigger_rates", P2) if k[0] == "adafuse"} == {0.5, 0.7}
    P4 = plans.notebook_params("04_full_benchmark", "cpu", tuned={"triviaqa": {"theta": 0.5}})
    plan4 = plans.runs_of("04_full_benchmark", P4)
    assert ("adafuse (tuned)", "triviaqa") in plan4 and plan4["adafuse (tuned)", "triviaqa"].decode == {"theta": 0.5}
    # ensure_runs: nothing saved and launch=False gives None for every key, and decodes nothing
    got = plans.ensure_runs(plan4, tmp_path, launch=False, log=lambda *_: None)
    assert set(got) == set(plan4) and all(v is None for v in got.values()) and not (tmp_path / "triviaqa").exists()


def test_decode_plan_skips_locked_and_finished_runs(tmp_path):
    import fcntl

    from adafuse_lab.figures import decode_plan
    kw = dict(limit=1, source="sample", max_new_tokens=4)
    cfgs = [R.run_config("triviaqa", "tiny:bpe,tiny:spm", "adafuse", {"B": b}, **kw) for b in (1, 2)]
    cfgs.append(R.run_config("flores_en-de", "tiny:bpe", "single", {}, **kw))
    plan = tmp_path / "plan.jsonl"
    plan.write_text("".join(json.dumps(c.to_dict()) + "\n" for c in cfgs))
    runs = tmp_path / "runs"
    held = R.run_dir(runs, cfgs[0])
    held.parent.mkdir(parents=True)
    with open(held.parent / f".{held.name}.lock", "w") as lock:  # another worker decodes this one
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        first = decode_plan(plan, runs, log=lambda m: None)
    assert first["busy"] == [str(held)] and len(first["decoded"]) == 2
    assert first["decoded"][0] == str(R.run_dir(runs, cfgs[2]))  # translation before QA: longer runs first
    second = decode_plan(plan, runs, log=lambda m: None)
    assert second["decoded"] == [str(held)] and len(second["found"]) == 2
    assert all(R.ensure_run(c, runs, launch=False, log=lambda m: None) is not None for c in cfgs)


def test_decode_plan_takes_plans_in_order_and_reads_them_again(tmp_path):
    # A lease's workers decode several ensembles' plans, the first's before the next's; a re-plan
    # of the first (the tuned settings' runs, once its tune half is saved) is taken up at once.
    from adafuse_lab.figures import decode_plan, write_plan
    kw = dict(limit=1, source="sample", max_new_tokens=4)
    first = [R.run_config("triviaqa", "tiny:bpe", "single", {}, **kw)]
    second = [R.run_config("flores_en-de", "tiny:spm", "single", {}, **kw),
              R.run_config("triviaqa", "tiny:spm", "single", {}, **kw)]
    added = R.run_config("triviaqa", "tiny:bpe,tiny:spm", "adafuse", {"theta": 0.5}, **kw)
    p1, p2, runs = tmp_path / "p1.jsonl", tmp_path / "p2.jsonl", tmp_path / "runs"
    line = lambda c: json.dumps(c.to_dict())
    write_plan(p1, [line(c) for c in first])
    write_plan(p2, [line(c) for c in second])

    def log(msg):
        if msg.startswith("[1/") and "decoded" in msg:  # the first run is saved: re-plan the first
            write_plan(p1, [line(c) for c in first + [added]])

    report = decode_plan([p1, p2], runs, log=log)
    assert report["decoded"] == [str(R.run_dir(runs, c)) for c in first + [added] + second]
    assert decode_plan([p1, p2], runs, log=lambda m: None)["found"] == report["decoded"]


def test_decode_plan_rejects_a_bad_file(tmp_path):
    from adafuse_lab.figures import decode_plan
    from adafuse_lab.runs import UsageError
    with pytest.raises(UsageError, match="no plan file"):
        decode_plan(tmp_path / "none.jsonl", tmp_path)
    (tmp_path / "bad.jsonl").write_text('{"task": "triviaqa", "colour": 1}\n')
    with pytest.raises(UsageError, match="not a plan file"):
        decode_plan(tmp_path / "bad.jsonl", tmp_path)


# ------------------------------------------------------------------ notebook plumbing


def test_notebook_params():
    p = plans.NotebookParams(models="a, b", tasks="triviaqa,gsm8k", thetas=[0.3, 0.7], B_values=[1, 3])
    assert p.models == ("a", "b") and p.tasks == ("triviaqa", "gsm8k") and p.thetas == (0.3, 0.7)
    assert p.run_kw()["max_new_tokens"] == 256
    with pytest.raises(ValueError, match="unknown notebook parameter.*'thetaa'.*did you mean 'theta"):
        plans.NotebookParams.from_dict({"thetaa": 0.5})
    with pytest.raises(KeyError):
        plans.NotebookParams(tasks="trivia_qa")
    with pytest.raises(ValueError, match="theta"):
        plans.NotebookParams(theta=1.5)
    with pytest.raises(ValueError, match="methods"):
        plans.NotebookParams(methods=["adafuse", "magic"])


def test_notebook_params_per_task_limits_and_dtype():
    import torch
    p = plans.NotebookParams(limit=100, limits={"gsm8k": 300, "nq": None}, dtype="float32")
    assert p.run_kw("gsm8k")["limit"] == 300 and p.run_kw("nq")["limit"] is None
    assert p.run_kw("squad")["limit"] == 100 and p.run_kw()["limit"] == 100
    assert p.run_kw()["dtype"] == "float32" and p.torch_dtype is torch.float32
    # the defaults add nothing to a run's config: saved runs keep their directories
    cfg = R.run_config("gsm8k", "tiny:bpe", **plans.NotebookParams(limit=5).run_kw("gsm8k"))
    assert cfg == R.run_config("gsm8k", "tiny:bpe", limit=5, source="auto", batch_size=16)
    with pytest.raises(KeyError):
        plans.NotebookParams(limits={"gsm8": 10})
    with pytest.raises(ValueError, match="limits\\['gsm8k'\\]"):
        plans.NotebookParams(limits={"gsm8k": 0})
    with pytest.raises(ValueError, match="parameter dtype: unknown dtype 'float33'"):
        plans.NotebookParams(dtype="float33")
    assert plans.NotebookParams(half="report").run_kw()["half"] == "report"
    with pytest.raises(ValueError, match="half must be"):
        plans.NotebookParams(half="second")
    plan = plans.benchmark_plan(["single", "adafuse"], ["m0", "m1"], tuned={"gsm8k": {"theta": 0.5}})
    assert plan[-1]["label"] == plans.TUNED and plans.row_decode(plan[-1], "gsm8k") == {"theta": 0.5}
    assert plans.row_decode(plan[-1], "nq") is None and plans.row_decode(plan[0], "gsm8k") == {}


def test_write_summary(tmp_path):
    path = plans.write_summary(tmp_path / "o", {"a": np.float32(0.5), "b": float("nan"), "c": np.int64(3),
                                            "d": [np.bool_(True), (1, 2)], 4: 1.23456789})
    assert json.loads(path.read_text()) == {"a": 0.5, "b": None, "c": 3, "d": [True, [1, 2]], "4": 1.234568}


def test_overrule_table_and_split():
    from types import SimpleNamespace
    recs = [{"id": "a", "trace": TRACE, "metrics": {"lenient": 0.0}},
            {"id": "b", "trace": TRACE[1:], "metrics": {"lenient": 1.0}}]
    runs = {("adafuse", "triviaqa"): SimpleNamespace(records=recs)}
    rows = tables.overrule_table(runs, ["triviaqa", "nq"], "adafuse", ["m0", "m1"])
    assert [(r["task"], r["member"], r["rounds"]) for r in rows] == [("triviaqa", "m0", 3), ("triviaqa", "m1", 3)]
    assert rows[0]["favourite_lost"] == pytest.approx(1 / 3) and rows[1]["favourite_lost"] == 0
    assert rows[0]["won_alone"] == 0 and rows[1]["won_alone"] == pytest.approx(1 / 3)  # " the big red"
    assert rows[0]["triggered"] == 1.0
    ref = [{"id": "a", "metrics": {"lenient": 1.0}}, {"id": "b", "metrics": {"lenient": 1.0}}]
    lost, kept = tables.overrule_split("triviaqa", recs, ref, "lenient", member=0)
    assert (lost["n"], lost["adafuse"], lost["reference"]) == (1, 0.0, 100.0)
    assert (kept["n"], kept["adafuse"], kept["reference"]) == (1, 100.0, 100.0)


def test_agreement_and_empty_answers():
    from types import SimpleNamespace
    stop = {"members": [member([0.1]), member([0.2])], "winner": 1,
            "candidates": [cand(" Die", [0], nll=(1.7, 10.2)), cand("\n\nQuestion:", [1], nll=(2.5, 0.9))]}
    ada = [{"id": "a", "prediction": "", "trace": [stop]}, {"id": "b", "prediction": " Paris.", "trace": []},
           {"id": "c", "prediction": "Rome"}]
    runs = {("adafuse", "t"): SimpleNamespace(records=ada),
            ("single: m0", "t"): SimpleNamespace(records=[{"id": "a", "prediction": "Die"}, {"id": "b", "prediction": "paris"},
                                                          {"id": "c", "prediction": "Rome"}]),
            ("single: m1", "t"): SimpleNamespace(records=[{"id": "a", "prediction": " "}, {"id": "c", "prediction": None}])}
    rows = tables.agreement_table(runs, ["t", "u"], "adafuse", ["single: m0", "single: m1", "single: m2"])
    # m0 gives the same answer for b (space, case, final period aside) and c; m1 for a (both empty), on 2 shared ids
    assert [(r["other"], r["n"], r["same_answer"]) for r in rows] == [("single: m0", 3, pytest.approx(2 / 3)),
                                                                     ("single: m1", 2, 0.5)]
    empty = tables.empty_answers(runs, ["t"], ["single: m0", "single: m1", "adafuse"], ["m0", "m1"])
    assert empty == [{"label": "single: m1", "task": "t", "n": 2, "empty": 2},
                     {"label": "adafuse", "task": "t", "n": 3, "empty": 1, "first_winner": "\n\nQuestion:",
                      "proposed_by": "m1", "first_winner_count": 1}]


def test_disagreement_table():
    from types import SimpleNamespace
    # members 0 and 1 prefer different candidates; member 1 prefers its own by more (3.0 > 0.5), and wins
    split = {"members": [member([0.1]), member([0.2])], "winner": 1,
             "candidates": [cand(" a", [0], nll=(1.0, 4.0)), cand(" b", [1], nll=(1.5, 1.0))]}
    agree = {"members": [member([0.9]), member([0.9])], "winner": 0,
             "candidates": [cand(" a", [0, 1], nll=(0.2, 0.3)), cand(" b", [1], nll=(2.0, 2.5))]}
    runs = {("adafuse", "t"): SimpleNamespace(records=[{"id": "x", "trace": [split, agree]}, {"id": "y", "trace": None}])}
    rows = tables.disagreement_table(runs, ["t", "u"], "adafuse", ["m0", "m1"])
    assert rows == [{"task": "t", "a": "m0", "b": "m1", "rounds": 1, "margin_a": 0.5, "margin_b": 3.0,
                     "won_a": 0, "won_b": 1}]


def test_leave_one_out_table():
    from types import SimpleNamespace
    # three members; " a" wins on the mean (1.0 + 0.5 + 2.0) / 3 = 1.17 against " b"'s (1.2 + 2.0 + 1.0) / 3 = 1.4.
    # Without m1 " b" would win (1.1 < 1.5); without m0 (1.25 < 1.5) or m2 (0.75 < 1.6) " a" still wins.
    first = {"members": [member([0.1])] * 3, "winner": 0,
             "candidates": [cand(" a", [0], nll=(1.0, 0.5, 2.0)), cand(" b", [2], nll=(1.2, 2.0, 1.0))]}
    # a later round nobody decides alone: every member prefers " c"
    later = {"members": [member([0.1])] * 3, "winner": 1,
             "candidates": [cand(" d", [0], nll=(3.0, 3.0, 3.0)), cand(" c", [1], nll=(1.0, 1.0, 1.0))]}
    # recorded winner is not the plain mean's (e.g. weights): left out, counted
    weighted = {"members": [member([0.1])] * 3, "winner": 0,
                "candidates": [cand(" e", [0], nll=(1.0, 5.0, 5.0)), cand(" f", [1], nll=(2.0, 1.0, 1.0))]}
    one_candidate = {"members": [member([0.9])] * 3, "winner": 0, "candidates": [cand(" g", [0], nll=(1.0, 1.0, 1.0))]}
    runs = {("adafuse", "t"): SimpleNamespace(records=[{"id": "x", "trace": [first, later, weighted, one_candidate]},
                                                       {"id": "y", "trace": None}])}
    rows = tables.leave_one_out_table(runs, ["t", "u"], "adafuse", ["m0", "m1", "m2"])
    assert [(r["member"], r["decided"], r["decided_first"]) for r in rows] == [("m0", 0.0, 0.0), ("m1", 0.5, 1.0),
                                                                             ("m2", 0.0, 0.0)]
    assert {(r["rounds"], r["first_rounds"], r["not_plain_mean"]) for r in rows} == {(2, 1, 1)}
    assert tables.leave_one_out_table(runs, ["t"], "adafuse", ["m0"]) == []  # one member decides nothing
