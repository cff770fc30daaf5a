"""Task loading, prompts, stop rules, scoring and test-set hygiene."""
import json
from pathlib import Path

import pytest

from adafuse_lab import tasks as T
from adafuse_lab.tasks import DataError, Example, TASKS, get_task

SHARED = next((p for p in (Path.cwd() / "../shared/data", Path(__file__).resolve().parents[1] / "../shared/data")
               if p.is_dir()), None)
needs_shared = pytest.mark.skipif(SHARED is None, reason="../shared/data not present")

README_ROWS = {"gsm8k": 300, "triviaqa": 1900, "nq": 1600, "squad": 1000,
               "flores_en-de": 400, "flores_de-en": 400, "flores_en-ro": 400}


def write_task(root: Path, task: str, lines, prompt: str | None = "Q prefix\n") -> Path:
    d = root / task
    d.mkdir(parents=True, exist_ok=True)
    (d / "dev.jsonl").write_text("".join(l if isinstance(l, str) else json.dumps(l) + "\n" for l in lines),
                                 encoding="utf-8")
    if prompt is not None:
        (d / "prompt.txt").write_text(prompt, encoding="utf-8")
    return d


@pytest.fixture(autouse=True)
def _isolated(monkeypatch):
    # Loading mutates the shared task objects' prompt; reset it so tests stay independent.
    for t in TASKS.values():
        monkeypatch.setattr(t, "_prompt_txt", None)
    monkeypatch.delenv("ADAFUSE_DATA", raising=False)


# ---------------------------------------------------------------- registry

def test_registry_and_unknown_name():
    assert set(TASKS) == set(README_ROWS)
    assert get_task("GSM8K") is TASKS["gsm8k"]
    with pytest.raises(KeyError) as e:
        get_task("trivia_qa")
    msg = str(e.value)
    assert "Did you mean 'triviaqa'?" in msg and "flores_en-ro" in msg and not msg.startswith("'")


# ---------------------------------------------------------------- prompts

def test_prompts_are_the_papers():
    ex = Example("x-0", "Who?", ["me"])
    qa = get_task("nq")
    assert qa.prompt_txt.endswith("Answer: Planet of the Apes\n")  # verbatim, trailing newline kept
    assert qa.prompt(ex) == qa.prompt_txt + "\n\nQuestion: Who?\nAnswer:"
    g = get_task("gsm8k")
    assert g.prompt(ex) == g.prompt_txt + "\n\nQuestion: Who?\nLet's think step by step\n"
    f = get_task("flores_de-en")
    assert f.prompt(ex) == f.prompt_txt + "\n\nQuestion: Who?\nAnswer:"
    # braces in a question are text, not format fields
    assert qa.prompt(Example("x", "{q} {0}", ["a"])).endswith("Question: {q} {0}\nAnswer:")


@needs_shared
def test_embedded_prompts_match_shared():
    for name in TASKS:
        assert (T.SAMPLES_DIR / name / "prompt.txt").read_bytes() == (SHARED / name / "prompt.txt").read_bytes()


def test_chat_template_variant():
    class Tok:
        chat_template = "x"

        def apply_chat_template(self, msgs, tokenize, add_generation_prompt):
            assert tokenize is False and add_generation_prompt is True and len(msgs) == 1
            return f"<user>{msgs[0]['content']}</user><assistant>"

    t, ex = get_task("triviaqa"), Example("x", "Who?", ["me"])
    assert t.prompt(ex, chat_tokenizer=Tok()) == f"<user>{t.prompt(ex)}</user><assistant>"

    class NoTemplate:
        chat_template = None

    with pytest.raises(ValueError, match="no chat template"):
        t.prompt(ex, chat_tokenizer=NoTemplate())


# ---------------------------------------------------------------- stopping

@pytest.mark.parametrize("task, text, cut", [
    ("nq", " Prince\n\nQuestion: next", 7),
    ("nq", " Prince\nQuestion: next", 7),
    ("squad", "\nFrance\n\nQuestion:", 7),     # the leading newline is not "a blank line after the answer"
    ("squad", "\nFrance", None),
    ("triviaqa", " George V.", None),
    ("flores_en-de", " Das ist gut.\nQuestion: x", 13),
    ("gsm8k", "2 + 2 = 4\n\nSo 4 apples.", None),  # blank lines are fine in a chain of thought
    ("gsm8k", "So 4.\nThe answer is \\boxed{4}.\n\nQuestion: x", 29),  # just after the "}"
    ("gsm8k", "x \\boxed{\\frac{1}{2}} y", 21),
    ("gsm8k", "The answer is \\boxed{4", None),    # not closed yet
    ("gsm8k", "So 4. Question: what", 6),
])
def test_stop_fn(task, text, cut):
    assert get_task(task).stop_fn(text) == cut


def test_every_task_has_stop_strings_and_fn():
    for t in TASKS.values():
        assert t.stop_strings and "\n\nQuestion:" in t.stop_strings
        assert t.stop_fn("answer\n\nQuestion: y") is not None


# ---------------------------------------------------------------- scoring

def test_qa_score_first_line_and_keys():
    t, ex = get_task("triviaqa"), Example("t-0", "q", ["George V", "King George V"])
    r = t.score(ex, " George V.\nHe reigned from 1910.\n\nQuestion: x")
    assert r == {"exact_match": 1.0, "f1": 1.0, "lenient": 1.0, "answer": "George V."}
    assert t.score(Example("s", "q", ["France"]), "\nFrance\n\n")["answer"] == "France"  # SQuAD style
    empty = t.score(ex, "")
    assert empty["exact_match"] == empty["f1"] == empty["lenient"] == 0.0 and empty["answer"] == ""
    assert t.score(ex, None)["answer"] == ""
    agg = t.aggregate([r, empty])
    assert agg == {"n": 2, "exact_match": 0.5, "f1": 0.5, "lenient": 0.5}
    # records nested the way run files store them aggregate the same way
    assert t.aggregate([{"id": "a", "metrics": r}, {"id": "b", "metrics": empty}]) == agg
    assert t.paper_metric == "lenient" and t.metric_keys == ("exact_match", "f1", "lenient")


def test_squad_uses_official_length_slack():
    sq, tq = get_task("squad"), get_task("triviaqa")
    ex = Example("s", "q", ["Henry Campbell Bannerman"])
    pred = "prime minister henry campbell bannerman of britain"
    assert sq.score(ex, pred)["lenient"] == 1.0 and tq.score(ex, pred)["lenient"] == 0.0


def test_gsm8k_score_and_aggregate():
    t = get_task("gsm8k")
    ex = Example("g-0", "q", ["15"], {"solution": "10 + 5 = 15\nTherefore, the answer is 15"})
    wrong = t.score(ex, "I think it is \\boxed{5}\n\nQuestion: 15 more")
    assert wrong == {"exact_match": 0.0, "upstream_compatible": 1.0, "answer": "5"}
    right = t.score(ex, "10 + 5 = 15. The answer is \\boxed{15}")
    assert right == {"exact_match": 1.0, "upstream_compatible": 1.0, "answer": "15"}
    none = t.score(ex, "")
    assert none["answer"] is None and none["exact_match"] == 0.0
    agg = t.aggregate([wrong, right, none])
    assert agg["n"] == 3 and agg["exact_match"] == pytest.approx(1 / 3)
    assert agg["upstream_compatible"] == pytest.approx(2 / 3) and agg["no_answer"] == pytest.approx(1 / 3)


def test_flores_score_and_corpus_aggregate():
    t = get_task("flores_en-de")
    exs = [Example("f-0", "The cat sleeps.", ["Die Katze schläft auf dem Sofa."]),
           Example("f-1", "Good morning.", ["Guten Morgen, liebe Freunde."])]
    recs = [{**t.score(e, p), "references": e.references}
            for e, p in zip(exs, [" Die Katze schläft auf dem Sofa.\n\nQuestion: x", ""])]
    assert set(recs[0]) == {"sentence_bleu", "sentence_chrf", "answer", "references"}
    assert recs[0]["answer"] == "Die Katze schläft auf dem Sofa."
    assert recs[1]["sentence_bleu"] == 0.0
    agg = t.aggregate(recs)
    assert agg["n"] == 2 and "tok:13a" in agg["bleu_signature"] and "nw:2" in agg["chrf_signature"]
    assert agg["bleu"] < t.aggregate(recs[:1])["bleu"]  # the empty output counts
    assert "spbleu" in agg and (agg["spbleu"] is not None or agg["spbleu_note"])
    assert t.aggregate([])["n"] == 0


# ---------------------------------------------------------------- hygiene

def test_drop_demo_leaks_real_triviaqa_prompt():
    prompt = ((SHARED or T.SAMPLES_DIR) / "triviaqa" / "prompt.txt").read_text(encoding="utf-8")
    assert len(T.demo_questions(prompt)) == 5
    exs = [Example("t-0", "Which British king married Mary of Teck?", ["George V"]),
           Example("t-1", "Which British king married Anne of Cleves?", ["Henry VIII"]),
           Example("t-2", "Which  British king married\nMary of Teck?", ["George V"]),  # whitespace only
           Example("t-3", "Which British king married Mary of Teck", ["George V"])]      # differs: no "?"
    kept, dropped = T.drop_demo_leaks(exs, prompt)
    assert [e.id for e in dropped] == ["t-0", "t-2"]
    assert [e.id for e in kept] == ["t-1", "t-3"]


def test_load_reports_dropped_leaks(tmp_path):
    prompt = (T.SAMPLES_DIR / "triviaqa" / "prompt.txt").read_text(encoding="utf-8")
    write_task(tmp_path, "triviaqa", [{"question": "Which British king married Mary of Teck?", "answer": ["George V"]},
                                     {"question": "What is 2+2?", "answer": ["4"]}], prompt)
    ex = get_task("triviaqa").load("local", data_dir=tmp_path)
    assert ex.dropped == ["triviaqa-0000"] and [e.id for e in ex] == ["triviaqa-0001"]
    assert len(get_task("triviaqa").load("local", data_dir=tmp_path, drop_leaks=False)) == 2


def test_duplicate_questions_keep_distinct_ids(tmp_path):
    rows = [{"question": "Ctx.\nWho?", "answer": ["A"]}, {"question": "Ctx.\nWho?", "answer": ["B"]},
            {"question": "Other.\nWhat?", "answer": ["C"]}]
    write_task(tmp_path, "squad", rows)
    ex = get_task("squad").load("local", data_dir=tmp_path)
    assert [e.id for e in ex] == ["squad-0000", "squad-0001", "squad-0002"]
    assert ex[0].question == ex[1].question and ex[0].references != ex[1].references
    assert [e.id for e in get_task("squad").load("local", data_dir=tmp_path, limit=2)] == ["squad-0000", "squad-0001"]


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("bad_line, needle", [
    ('{"question": "q", "answer": ["a"]\n', "invalid JSON"),
    ('{"answer": ["a"]}\n', "missing field 'question'"),
    ('{"question": 3, "answer": ["a"]}\n', "'question' must be a string"),
    ('{"question": "   ", "answer": ["a"]}\n', "empty question"),
    ('{"question": "q", "answer": 7}\n', "'answer' must be a string or a list"),
    ('{"question": "q", "answer": []}\n', "non-empty list"),
    ('{"question": "q", "answer": [""]}\n', "empty answer"),
    ('["q", "a"]\n', "expected a JSON object"),
])
def test_malformed_jsonl_names_file_and_line(tmp_path, bad_line, needle):
    good = '{"question": "q", "answer": ["a"]}\n'
    d = write_task(tmp_path, "nq", [good, "\n", bad_line, good])  # blank line 2: bad row is line 3
    with pytest.raises(DataError) as e:
        get_task("nq").load("local", data_dir=tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"{d / 'dev.jsonl'}:3: ") and needle in msg and "\n" not in msg


def test_gsm8k_gold_without_number_is_an_error(tmp_path):
    write_task(tmp_path, "gsm8k", [{"question": "q", "answer": "no idea"}])
    with pytest.raises(DataError, match=r"dev.jsonl:1: no number"):
        get_task("gsm8k").load("local", data_dir=tmp_path)


def test_local_missing_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="nq/dev.jsonl"):
        get_task("nq").load("local", data_dir=tmp_path)


# ---------------------------------------------------------------- sources

def test_env_var_and_local_prompt(tmp_path, monkeypatch):
    write_task(tmp_path, "nq", [{"question": "who?", "answer": ["me"]}], prompt="MY PREFIX")
    monkeypatch.setenv("ADAFUSE_DATA", str(tmp_path))
    t = get_task("nq")
    ex = t.load()
    assert ex.source == "local" and ex.location == str(tmp_path / "nq" / "dev.jsonl")
    assert t.prompt(ex[0]) == "MY PREFIX\n\nQuestion: who?\nAnswer:" and ex.prompt_txt == "MY PREFIX"


def test_auto_falls_back_to_samples(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")

    def unreachable(*a, **k):
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    monkeypatch.setattr(T, "data_dirs", lambda data_dir=None: [tmp_path])  # no local folder found
    ex = get_task("nq").load()
    assert ex.source == "sample" and len(ex) == 8
    # a folder given explicitly is used or refused, never skipped for the hub or the samples
    with pytest.raises(FileNotFoundError, match="no local data"):
        get_task("nq").load(data_dir=tmp_path)
    with pytest.raises(RuntimeError, match="hub unreachable"):
        get_task("nq").load("hub")


def test_auto_skips_hub_when_offline(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("hub called while offline"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(T, "data_dirs", lambda data_dir=None: [tmp_path])  # no local folder found
    assert get_task("squad").load().source == "sample"


FAKE_HUB = {
    ("openai/gsm8k", "main", "test"): [
        {"question": "2+3?", "answer": "2 + 3 = 5\n#### 5"},
        {"question": "10*100?", "answer": "10 * 100 = 1000\n#### 1,000"}],
    ("mandarjoshi/trivia_qa", "rc.wikipedia.nocontext", "validation"): [
        {"question": "Who?", "question_id": "tc_1",
         "answer": {"value": "George V", "aliases": ["George V", "King George V"], "normalized_value": "george v"}}],
    ("google-research-datasets/nq_open", "nq_open", "validation"): [
        {"question": "when was x", "answer": ["1999", "in 1999"]}],
    ("rajpurkar/squad", "plain_text", "validation"): [
        {"id": "5733be", "title": "T", "context": "Ctx here. ", "question": " Who? ",
         "answers": {"text": ["Ctx", "Ctx", "here"], "answer_start": [0, 0, 4]}}],
    ("openlanguagedata/flores_plus", "eng_Latn", "devtest"): [
        {"id": 1, "text": "Hello.", "iso_639_3": "eng"}, {"id": 2, "text": "Bye.", "iso_639_3": "eng"}],
    ("openlanguagedata/flores_plus", "deu_Latn", "devtest"): [
        {"id": 2, "text": "Tschüss.", "iso_639_3": "deu"}, {"id": 1, "text": "Hallo.", "iso_639_3": "deu"}],
}


@pytest.fixture
def fake_hub(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def load_dataset(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        return FAKE_HUB[(path, name, split)]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_mapping(fake_hub, tmp_path, monkeypatch):
    g = get_task("gsm8k").load("hub", split="test")
    assert g.source == "hub" and g.location == "openai/gsm8k[test]"
    assert [e.references for e in g] == [["5"], ["1000"]] and g[1].meta["solution"].endswith("#### 1,000")
    assert get_task("gsm8k").score(g[1], "\\boxed{1,000}")["exact_match"] == 1.0

    tq = get_task("triviaqa").load("hub", split="test")
    assert tq[0].references == ["George V", "King George V"] and tq[0].id == "triviaqa-0000"

    assert get_task("nq").load("hub", split="test")[0].references == ["1999", "in 1999"]

    sq = get_task("squad").load("hub", split="test")
    assert sq[0].question == "Ctx here.\nWho?" and sq[0].references == ["Ctx", "here"]
    assert sq[0].meta["source_id"] == "5733be"

    fl = get_task("flores_en-de").load("hub", split="test")
    assert [(e.question, e.references) for e in fl] == [("Hello.", ["Hallo."]), ("Bye.", ["Tschüss."])]
    # the paper's prompt comes with hub data
    assert fl.prompt_txt == (T.SAMPLES_DIR / "flores_en-de" / "prompt.txt").read_text(encoding="utf-8")

    # auto uses the hub when no local folder has the task
    monkeypatch.setattr(T, "data_dirs", lambda data_dir=None: [tmp_path])
    assert get_task("nq").load(split="test").source == "hub"
    assert ("openai/gsm8k", "main", "test") in fake_hub


def test_hub_rows_are_validated(monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda *a, **k: [{"question": "", "answer": ["x"]}])
    with pytest.raises(DataError, match=r"nq_open\[validation\]:1: empty question"):
        get_task("nq").load("hub", split="test")


@pytest.mark.parametrize("name", sorted(README_ROWS))
def test_load_samples(name):
    t = get_task(name)
    ex = t.load("sample")
    assert ex.source == "sample" and len(ex) == 8 and not ex.dropped
    assert len({e.id for e in ex}) == 8
    for e in ex:
        assert e.question.strip() and e.references and all(r.strip() for r in e.references)
        assert t.prompt(e).startswith(t.prompt_txt)
        t.score(e, e.references[0])  # a reference scores without error
    if name == "gsm8k":
        assert all(t.score(e, f"The answer is \\boxed{{{e.references[0]}}}")["exact_match"] == 1.0 for e in ex)
    elif t.kind == "qa":
        assert all(t.score(e, e.references[0])["exact_match"] == 1.0 for e in ex)


@needs_shared
@pytest.mark.parametrize("name", sorted(README_ROWS))
def test_load_shared_data(name):
    t = get_task(name)
    ex = t.load("local", data_dir=SHARED)
    assert ex.source == "local" and len(ex) + len(ex.dropped) == README_ROWS[name]
    assert len({e.id for e in ex}) == len(ex)
    assert all(e.question.strip() and e.references for e in ex)
    if name == "squad":
        assert len(ex.dropped) == 4  # four of the five SQuAD demos occur in the data
    if name == "gsm8k":
        assert all(e.references[0].lstrip("-").replace(".", "").isdigit() for e in ex)
    assert len(t.load("local", data_dir=SHARED, limit=3)) == 3
