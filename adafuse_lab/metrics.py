"""Metrics: SQuAD EM/F1, the paper's lenient QA match, GSM8K answer extraction,
sacreBLEU/chrF++ (+ spBLEU when its model is cached), and bootstrap intervals.

Scales: per-example QA/GSM8K scores are 0/1 (F1 in [0, 1]), so their means are
fractions; BLEU, chrF and spBLEU are 0-100 as sacrebleu reports them.
"""
from __future__ import annotations

import os
import re
import string
from collections import Counter
from decimal import Decimal
from typing import Iterable, Sequence

import numpy as np

# --------------------------------------------------------------------------- QA

_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD v1.1: lower, drop punctuation, drop articles a/an/the, squash spaces."""
    if not isinstance(s, str):
        raise TypeError(f"an answer to score must be a string, got {type(s).__name__} {s!r}")
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _golds(golds: str | Sequence[str]) -> list[str]:
    golds = [golds] if isinstance(golds, str) else list(golds)
    if not golds:
        raise ValueError("no gold answers to score against")
    return golds


def exact_match(prediction: str, golds: str | Sequence[str]) -> float:
    """SQuAD exact match after normalisation, max over gold answers (0.0 or 1.0)."""
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(g) for g in _golds(golds)))


def _f1(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:  # v1.1 rule: also 0 when both sides are empty
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, golds: str | Sequence[str]) -> float:
    """SQuAD token F1 after normalisation, max over gold answers."""
    return max(_f1(prediction, g) for g in _golds(golds))


_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate(
    "twenty thirty forty fifty sixty seventy eighty ninety".split(), start=2)}
_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}


def as_number(text: str) -> Decimal | None:
    """'1,000', '5.0', '-3', 'twenty-one', 'two hundred and five' -> Decimal; else None."""
    t = text.strip().lower().rstrip(".").replace(",", "").lstrip("$")
    if re.fullmatch(r"-?\d+(\.\d+)?", t):
        return Decimal(t)
    words = [w for w in re.split(r"[\s-]+", t) if w and w != "and"]
    if not words:
        return None
    total = cur = 0
    for w in words:
        if w in _UNITS or w in _TENS:
            cur += _UNITS.get(w, 0) + _TENS.get(w, 0)
        elif w == "hundred":
            cur = max(cur, 1) * 100
        elif w in _SCALES:
            total, cur = total + max(cur, 1) * _SCALES[w], 0
        else:
            return None
    return Decimal(total + cur)


def lenient_match(prediction: str, gold: str, len_slack: int = 1, cap: bool = True) -> bool:
    """The paper's lenient QA match, with one extra length cap of ours.

    In order:
    1. both sides parse as numbers (digits or number words): compare the numbers
       only (so "two" == "2" and "5.0" == "5", but "5.0" != "50", which the
       SQuAD normalisation alone would conflate);
    2. SQuAD-normalised strings are equal;
    3. token containment: the shorter side's tokens are all in the longer side,
       subject to two limits:
       - official scorers: when the shorter side has >= 3 tokens, the token
         counts may differ by at most `len_slack` (1 for TriviaQA/NQ, 5 for
         SQuAD in the authors' scripts);
       - ours: the prediction has at most 2 * len(gold) + 2 tokens. The official
         rule has no cap when the shorter side has 1-2 tokens, so a rambling
         sentence that mentions the one-word gold would count; the cap keeps
         "Paris, France" for "Paris" and rejects "it could be Paris or Rome".
         `cap=False` scores by the official rule alone.
    Empty (after normalisation) predictions never match.
    """
    pn, gn = as_number(prediction), as_number(gold)
    if pn is not None and gn is not None:
        return pn == gn
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not p or not g:
        return False
    if p == g:
        return True
    small, big = sorted((p, g), key=len)
    if len(small) >= 3 and len(big) - len(small) > len_slack:
        return False
    if cap and len(p) > 2 * len(g) + 2:
        return False
    return set(small) <= set(big)


def lenient(prediction: str, golds: str | Sequence[str], len_slack: int = 1, cap: bool = True) -> float:
    """`lenient_match` as 0.0/1.0, max over gold answers."""
    return float(any(lenient_match(prediction, g, len_slack, cap) for g in _golds(golds)))


# ------------------------------------------------------------------------ GSM8K

# A number: optional sign (not a hyphen glued to a word, "3-4" is not -4),
# thousands groups or plain digits, optional decimals. "$" and a trailing "."
# are left outside the match.
_NUM_RE = re.compile(r"(?<![\w.])(?:(?<![\w\-])[-−])?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d)")
_ANSWER_IS_RE = re.compile(r"the answer is", re.IGNORECASE)


def _canon(num: str) -> str:
    d = Decimal(num.replace(",", "").replace("−", "-"))
    return str(int(d)) if d == d.to_integral_value() else format(d.normalize(), "f")


def _numbers(text: str) -> list[str]:
    return [_canon(m.group()) for m in _NUM_RE.finditer(text)]


def _closed_boxes(text: str):
    """(content start, end) of each closed \\boxed{...} in order; nested braces allowed."""
    for m in re.finditer(r"\\boxed\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            yield m.end(), i


def last_boxed(text: str) -> str | None:
    """Content of the last closed \\boxed{...} (nested braces allowed), else None."""
    found = None
    for start, end in _closed_boxes(text):
        found = text[start:end - 1]
    return found


def boxed_end(text: str) -> int | None:
    """Index just after the first closed \\boxed{...}, for stopping generation."""
    return next((end for _, end in _closed_boxes(text)), None)


def extract_gsm8k_answer(text: str) -> str | None:
    """The predicted number as a canonical string ("1,000.0" -> "1000"), or None.

    Order: the last number inside the last closed \\boxed{}; else the first number
    after the last "the answer is"; else the last number in the text.
    """
    boxed = last_boxed(text)
    if boxed is not None and (nums := _numbers(boxed)):
        return nums[-1]
    hits = list(_ANSWER_IS_RE.finditer(text))
    if hits and (nums := _numbers(text[hits[-1].end():])):
        return nums[0]
    nums = _numbers(text)
    return nums[-1] if nums else None


def gsm8k_gold(text: str) -> str | None:
    """Gold number: after the last "the answer is", else after "####" (hub format),
    else the last number."""
    hits = list(_ANSWER_IS_RE.finditer(text))
    if hits and (nums := _numbers(text[hits[-1].end():])):
        return nums[0]
    if "####" in text and (nums := _numbers(text.rsplit("####", 1)[1])):
        return nums[0]
    nums = _numbers(text)
    return nums[-1] if nums else None


def gsm8k_strict(prediction: str, gold: str) -> bool:
    """Exact numeric equality of the extracted prediction with the gold number."""
    p, g = extract_gsm8k_answer(prediction), gsm8k_gold(gold)
    return p is not None and g is not None and Decimal(p) == Decimal(g)


def _upstream_norm(s: str) -> str:
    s = re.sub(r"[^\d.]", "", s.lower())
    if not s:
        return ""
    try:
        return f"{round(float(s), 2):.2f}"
    except ValueError:
        return s


def gsm8k_upstream_compatible(prediction: str, gold: str) -> bool:
    """The official AdaFuse GSM8K scorer's rule, reproduced for comparison only.

    Prediction: the FIRST \\boxed{...} without nested braces, else the whole text;
    gold: the rest of the line after the first "the answer is", else the whole
    gold. Both keep only digits and dots, become "%.2f", and match when equal OR
    when either is a substring of the other -- so "5" counts for "15". Not a
    correctness metric: report it only as "upstream_compatible".
    """
    m = re.search(r"\\boxed{([^}]+)}", prediction)
    pred = m.group(1).strip() if m else prediction
    m = re.search(r"[Tt]he answer is\s+(.*)", gold)
    label = m.group(1).strip() if m else gold
    p, g = _upstream_norm(pred), _upstream_norm(label)
    return bool(p and g) and (p == g or p in g or g in p)


# -------------------------------------------------------------- translation

def _sacrebleu():
    import sacrebleu  # noqa: F401  (imported lazily: only FLORES needs it)
    from sacrebleu.metrics import BLEU, CHRF
    return BLEU, CHRF


def _ref_streams(refs: Sequence[Sequence[str]]) -> list[list[str]]:
    """Per-example reference lists -> sacrebleu's reference streams."""
    refs = [[r] if isinstance(r, str) else list(r) for r in refs]
    counts = {len(r) for r in refs}
    if len(counts) > 1 or 0 in counts:
        raise ValueError(f"every example needs the same (>0) number of references, got {sorted(counts)}")
    return [list(s) for s in zip(*refs)]


def _hyps(hyps: Iterable[str | None]) -> list[str]:
    return ["" if h is None else h for h in hyps]  # empty output scores as empty


def spbleu_status() -> tuple[bool, str]:
    """Whether spBLEU (flores200 SentencePiece) can run offline, and why not.

    Looks for the model file where sacrebleu would put it; never downloads.
    """
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        return False, "sentencepiece is not installed"
    from sacrebleu.tokenizers import tokenizer_spm
    url = tokenizer_spm.SPM_MODELS["flores200"]["url"]
    path = os.path.join(tokenizer_spm.SACREBLEU_DIR, "models", os.path.basename(url))
    if not os.path.exists(path):
        return False, f"flores200 SentencePiece model not in the sacrebleu cache ({path})"
    return True, path


def corpus_translation_scores(hyps: Sequence[str | None], refs: Sequence[Sequence[str] | str]) -> dict:
    """Corpus BLEU (13a) and chrF++ with signatures; spBLEU when available.

    Keys: bleu, bleu_signature, chrf, chrf_signature, spbleu (None when absent),
    spbleu_signature or spbleu_note.
    """
    BLEU, CHRF = _sacrebleu()
    h, r = _hyps(hyps), _ref_streams(refs)
    bleu, chrf = BLEU(tokenize="13a"), CHRF(word_order=2)
    out = {
        "bleu": bleu.corpus_score(h, r).score,
        "bleu_signature": bleu.get_signature().format(),
        "chrf": chrf.corpus_score(h, r).score,
        "chrf_signature": chrf.get_signature().format(),
    }
    ok, why = spbleu_status()
    if ok:
        sp = BLEU(tokenize="flores200")
        out.update(spbleu=sp.corpus_score(h, r).score, spbleu_signature=sp.get_signature().format())
    else:
        out.update(spbleu=None, spbleu_note=why)
    return out


_SENT = {}


def sentence_translation_scores(hyp: str | None, refs: Sequence[str] | str) -> dict:
    """Per-example sentence BLEU (13a, effective order) and chrF++."""
    if not _SENT:
        BLEU, CHRF = _sacrebleu()
        _SENT.update(bleu=BLEU(tokenize="13a", effective_order=True), chrf=CHRF(word_order=2))
    refs = [refs] if isinstance(refs, str) else list(refs)
    hyp = hyp or ""
    return {"sentence_bleu": _SENT["bleu"].sentence_score(hyp, refs).score,
            "sentence_chrf": _SENT["chrf"].sentence_score(hyp, refs).score}


# ---------------------------------------------------------------- bootstrap

def _interval(samples: np.ndarray, alpha: float) -> tuple[float, float]:
    lo, hi = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _finite(values, who: str) -> np.ndarray:
    """Per-example values as a 1-D float array; none missing (NaN) or infinite: an interval
    over them would be NaN, or silently wrong."""
    v = np.asarray(values, dtype=float).reshape(-1)
    if v.size == 0:
        raise ValueError(f"{who} needs at least one value")
    bad = np.flatnonzero(~np.isfinite(v))
    if bad.size:
        raise ValueError(f"{who}: value {int(bad[0])} is {v[bad[0]]} ({bad.size} of {v.size} not finite); "
                         f"drop or score those examples first")
    return v


def bootstrap_ci(values: Sequence[float], n: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Percentile bootstrap CI of the mean of per-example values.

    Returns {"mean", "low", "high", "n"}.
    """
    v = _finite(values, "bootstrap_ci")
    idx = np.random.default_rng(seed).integers(0, v.size, size=(n, v.size))
    lo, hi = _interval(v[idx].mean(axis=1), alpha)
    return {"mean": float(v.mean()), "low": lo, "high": hi, "n": int(v.size)}


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n: int = 1000, seed: int = 0,
                     alpha: float = 0.05) -> dict:
    """Paired bootstrap of mean(a) - mean(b) over the same examples.

    Returns {"diff", "low", "high", "p_value", "n"}; p_value is two-sided:
    2 * min(P(diff* <= 0), P(diff* >= 0)), capped at 1.
    """
    a, b = _finite(a, "paired_bootstrap"), _finite(b, "paired_bootstrap")
    if a.shape != b.shape:
        raise ValueError(f"paired_bootstrap needs two lists of equal length, got {a.size} and {b.size}")
    d = a - b
    idx = np.random.default_rng(seed).integers(0, d.size, size=(n, d.size))
    boot = d[idx].mean(axis=1)
    lo, hi = _interval(boot, alpha)
    p = min(1.0, 2 * min((boot <= 0).mean(), (boot >= 0).mean()))
    return {"diff": float(d.mean()), "low": lo, "high": hi, "p_value": float(p), "n": int(d.size)}


def corpus_bootstrap(hyps: Sequence[str | None], refs: Sequence[Sequence[str] | str], metric: str = "bleu",
                     n: int = 1000, seed: int = 0, alpha: float = 0.05,
                     hyps_b: Sequence[str | None] | None = None) -> dict:
    """Bootstrap of a corpus metric ("bleu" 13a or "chrf" chrF++) over resampled examples.

    Sentence statistics are extracted once and summed per resample, so 1000
    resamples cost about as much as one corpus score. With `hyps_b`, the same
    resamples give a paired difference score(hyps) - score(hyps_b).
    Returns {"score", "low", "high", "n"} (+ "p_value", two-sided, when paired).
    """
    BLEU, CHRF = _sacrebleu()
    m = {"bleu": lambda: BLEU(tokenize="13a"), "chrf": lambda: CHRF(word_order=2)}[metric]()
    r = _ref_streams(refs)

    def stats(h):
        return np.asarray(m._extract_corpus_statistics(_hyps(h), r), dtype=float)

    def score(s):
        return m._compute_score_from_stats(s.tolist()).score

    sa = stats(hyps)
    idx = np.random.default_rng(seed).integers(0, len(sa), size=(n, len(sa)))
    boot = np.array([score(sa[i].sum(0)) for i in idx])
    point = score(sa.sum(0))
    out = {"score": point, "n": len(sa)}
    if hyps_b is not None:
        sb = stats(hyps_b)
        boot = boot - np.array([score(sb[i].sum(0)) for i in idx])
        out["score"] = point - score(sb.sum(0))
        out["p_value"] = float(min(1.0, 2 * min((boot <= 0).mean(), (boot >= 0).mean())))
    out["low"], out["high"] = _interval(boot, alpha)
    return out


__all__ = [
    "normalize_answer", "exact_match", "f1", "as_number", "lenient_match", "lenient",
    "last_boxed", "boxed_end", "extract_gsm8k_answer", "gsm8k_gold", "gsm8k_strict",
    "gsm8k_upstream_compatible", "spbleu_status", "corpus_translation_scores",
    "sentence_translation_scores", "bootstrap_ci", "paired_bootstrap", "corpus_bootstrap",
]
