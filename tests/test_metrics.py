"""Metric vectors chosen to fail on the known traps (substring GSM8K match,
comma/decimal numbers, skipped empty translations, SQuAD normalisation)."""
import pytest

from adafuse_lab import metrics as M


# ---------------------------------------------------------------- SQuAD EM/F1

@pytest.mark.parametrize("raw, norm", [
    ("The Eiffel Tower!", "eiffel tower"),
    ("  a  cat,  an apple; the END. ", "cat apple end"),
    ("Anthem of theatre", "anthem of theatre"),   # articles only as whole words
    ("Campbell-Bannerman", "campbellbannerman"),  # punctuation is deleted, not spaced
    ("", ""),
])
def test_normalize_answer(raw, norm):
    assert M.normalize_answer(raw) == norm


def test_exact_match_and_f1_max_over_golds():
    assert M.exact_match("the Eiffel tower.", ["Louvre", "Eiffel Tower"]) == 1.0
    assert M.exact_match("Eiffel", ["Eiffel Tower"]) == 0.0
    # pred {cat, sat} vs gold {cat, sat, down}: P = 1, R = 2/3, F1 = 0.8
    assert M.f1("the cat sat", ["dog", "a cat sat down"]) == pytest.approx(0.8)
    assert M.f1("cat cat", "cat") == pytest.approx(2 / 3)  # counts are clipped
    with pytest.raises(ValueError):
        M.f1("x", [])


def test_empty_prediction_scores_zero():
    for fn in (M.exact_match, M.f1, M.lenient):
        assert fn("", ["Paris"]) == 0.0
        assert fn("the", ["Paris"]) == 0.0  # normalises to empty


# ---------------------------------------------------------------- lenient

@pytest.mark.parametrize("pred, gold, slack, ok", [
    ("Paris", "paris", 1, True),
    ("Paris, France", "Paris", 1, True),                   # containment within the cap
    ("it could be Paris or Rome", "Paris", 1, False),      # over our 2*gold+2 cap
    ("George", "George V", 1, True),                       # gold contains prediction
    ("two", "2", 1, True),                                 # same number
    ("1,000", "1000", 1, True),
    ("5.0", "5", 1, True),
    ("5.0", "50", 1, False),  # numbers compare as numbers, not as "50" == "50"
    ("twenty-one", "21", 1, True),
    ("Henry Campbell Bannerman", "Sir Henry Campbell Bannerman", 1, True),
    # shorter side has 3 tokens, lengths differ by 4: official TriviaQA/NQ slack 1
    # rejects, the SQuAD slack 5 accepts
    ("prime minister henry campbell bannerman of britain", "Henry Campbell Bannerman", 1, False),
    ("prime minister henry campbell bannerman of britain", "Henry Campbell Bannerman", 5, True),
    ("London", "Paris", 5, False),
])
def test_lenient_match(pred, gold, slack, ok):
    assert M.lenient_match(pred, gold, len_slack=slack) is ok


def test_lenient_without_our_cap_is_the_official_rule():
    # a rambling answer that mentions a short gold counts only without the cap
    assert M.lenient("it could be Paris or Rome", ["Paris"], cap=False) == 1.0
    assert M.lenient("it could be Paris or Rome", ["Paris"]) == 0.0
    # the official length slack still applies when the shorter side has 3+ tokens
    assert not M.lenient_match("prime minister henry campbell bannerman of britain",
                               "Henry Campbell Bannerman", 1, cap=False)


def test_as_number():
    assert M.as_number("two hundred and five") == 205
    assert M.as_number("$1,000.") == 1000
    assert M.as_number("three thousand four") == 3004
    assert M.as_number("Paris") is None


# ---------------------------------------------------------------- GSM8K

@pytest.mark.parametrize("text, num", [
    ("The total is $1,000.", "1000"),
    ("So she has 5.0 apples.", "5"),
    ("It costs $5.50.", "5.5"),
    ("The answer is -7 degrees.", "-7"),
    ("It takes 3-4 days, so 4", "4"),                        # "3-4" is not minus four
    ("The answer is 18. Next we check 5 + 13 = 18 and 99", "18"),  # after "the answer is"
    ("The answer is 7.\nBut wait: \\boxed{8}", "8"),         # boxed wins
    ("\\boxed{2} then \\boxed{1,234}", "1234"),              # the last boxed
    ("\\boxed{\\frac{3}{1} = 3}", "3"),                      # nested braces
    ("\\boxed{x} and the answer is 6", "6"),                 # boxed without a number
    ("no number here", None),
])
def test_extract_gsm8k_answer(text, num):
    assert M.extract_gsm8k_answer(text) == num


def test_gsm8k_gold_formats():
    assert M.gsm8k_gold("2 + 3 = 5.\nTherefore, the answer is 5") == "5"
    assert M.gsm8k_gold("He has 10 and 2.\n#### 1,200") == "1200"  # hub format
    assert M.gsm8k_gold("72") == "72"


def test_gsm8k_strict_vs_upstream_substring_trap():
    gold = "Therefore, the answer is 15"
    assert not M.gsm8k_strict("The answer is \\boxed{5}", gold)
    assert M.gsm8k_upstream_compatible("The answer is \\boxed{5}", gold)   # "5.00" in "15.00"
    assert M.gsm8k_strict("The answer is \\boxed{15}", gold)
    assert M.gsm8k_strict("We pay $1,000.", "the answer is 1000")
    assert M.gsm8k_strict("That is 5.0", "the answer is 5")
    assert not M.gsm8k_strict("", "the answer is 5")
    assert not M.gsm8k_upstream_compatible("", "the answer is 5")


# ---------------------------------------------------------------- FLORES

REFS = ["The cat sat on the mat today.", "A man walks his dog in the park every morning."]
HYPS = ["The cat sat on the mat today.", "A man walks the dog in a park each morning."]


def test_corpus_scores_and_signatures():
    s = M.corpus_translation_scores(HYPS, REFS)
    assert 0 < s["bleu"] < 100 and 0 < s["chrf"] < 100
    assert "tok:13a" in s["bleu_signature"]
    assert "nw:2" in s["chrf_signature"]  # chrF++


def test_empty_prediction_counted_not_skipped():
    full = M.corpus_translation_scores(HYPS, REFS)
    with_empty = M.corpus_translation_scores([HYPS[0], ""], REFS)
    skipped = M.corpus_translation_scores(HYPS[:1], REFS[:1])
    assert with_empty["bleu"] < skipped["bleu"]
    assert with_empty["chrf"] < skipped["chrf"]
    assert with_empty["bleu"] < full["bleu"]
    assert M.corpus_translation_scores([None, HYPS[1]], REFS)["bleu"] >= 0  # None is ""
    assert M.sentence_translation_scores("", REFS[0]) == {"sentence_bleu": 0.0, "sentence_chrf": 0.0}
    assert M.sentence_translation_scores(REFS[0], [REFS[0]])["sentence_bleu"] == pytest.approx(100)


def test_spbleu_absent_without_download(monkeypatch, tmp_path):
    from sacrebleu.tokenizers import tokenizer_spm

    def no_download(*a, **k):
        raise AssertionError("must not download")

    monkeypatch.setattr(tokenizer_spm, "download_file", no_download)
    monkeypatch.setattr(tokenizer_spm, "SACREBLEU_DIR", str(tmp_path))
    ok, why = M.spbleu_status()
    assert not ok and why
    s = M.corpus_translation_scores(HYPS, REFS)
    assert s["spbleu"] is None and s["spbleu_note"] == why


# ---------------------------------------------------------------- bootstrap

def test_bootstrap_ci():
    r = M.bootstrap_ci([1.0] * 10)
    assert r == {"mean": 1.0, "low": 1.0, "high": 1.0, "n": 10}
    vals = [0, 1] * 50
    r = M.bootstrap_ci(vals, n=500, seed=1)
    assert r["low"] < 0.5 < r["high"] and r["mean"] == 0.5
    assert M.bootstrap_ci(vals, n=500, seed=1) == r  # seeded


def test_paired_bootstrap():
    a = [1, 0, 1, 1, 0, 1, 1, 1] * 10
    same = M.paired_bootstrap(a, a)
    assert same["diff"] == 0 and same["p_value"] == 1.0
    better = M.paired_bootstrap(a, [0] * len(a))
    assert better["diff"] == pytest.approx(0.75) and better["low"] > 0 and better["p_value"] < 0.01
    with pytest.raises(ValueError):
        M.paired_bootstrap([1, 0], [1])


def test_corpus_bootstrap():
    hyps, refs = HYPS * 5, REFS * 5
    r = M.corpus_bootstrap(hyps, refs, n=200)
    assert r["score"] == pytest.approx(M.corpus_translation_scores(hyps, refs)["bleu"])
    assert r["low"] <= r["score"] <= r["high"]
    c = M.corpus_bootstrap(hyps, refs, metric="chrf", n=50)
    assert c["score"] == pytest.approx(M.corpus_translation_scores(hyps, refs)["chrf"])
    p = M.corpus_bootstrap(hyps, refs, n=100, hyps_b=hyps)
    assert p["score"] == 0 and p["low"] == p["high"] == 0 and p["p_value"] == 1.0


def test_intervals_and_auroc_refuse_what_would_make_them_silently_wrong():
    """A missing (NaN) or infinite per-example value, unequal lists, or a prediction that is not
    a string is refused in one line naming it, not turned into a NaN interval or a crash deep inside."""
    from adafuse_lab import metrics, stats
    for bad in ([1.0, float("nan"), 0.0], [0.0, float("inf")]):
        with pytest.raises(ValueError, match="bootstrap_ci: value 1 is .* not finite"):
            metrics.bootstrap_ci(bad)
        with pytest.raises(ValueError, match="paired_bootstrap: value 1"):
            metrics.paired_bootstrap(bad, [0.0] * len(bad))
    with pytest.raises(ValueError, match="equal length, got 2 and 3"):
        metrics.paired_bootstrap([1.0, 0.0], [1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="one label per score, got 3 scores and 2 labels"):
        stats.auroc([0.1, 0.2, 0.3], [True, False])
    with pytest.raises(TypeError, match="must be a string, got NoneType"):
        metrics.exact_match(None, ["Paris"])
    assert metrics.bootstrap_ci([1.0, 0.0, 1.0])["mean"] == pytest.approx(2 / 3)
