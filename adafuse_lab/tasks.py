"""Task registry: loading (local folder / HF hub / embedded samples), prompts,
stop rules, answer post-processing and scoring.

    task = get_task("triviaqa")
    examples = task.load()                  # examples.source says where they came from
    text = task.prompt(examples[0])         # the paper's plain-text prompt
    cut = task.stop_fn(continuation)        # index to cut at, or None
    rec = task.score(examples[0], continuation)
    summary = task.aggregate([rec | {"references": ex.references}, ...])

Local data layout (the same as ../shared/data): `<data_dir>/<task>/<split>.jsonl`
with one {"question": str, "answer": str | list[str], "id"?: int|str} per line,
plus `<data_dir>/<task>/prompt.txt`. Local folders are searched in this order:
the `data_dir` argument; else `$ADAFUSE_DATA`; else `../shared/data`,
`./shared/data`, `./data` relative to the current directory, then the same three
relative to the repository root (so notebooks run from notebooks/ find them).
The first folder holding `<task>/<split>.jsonl` wins.
"""
from __future__ import annotations

import difflib
import json
import logging
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from . import metrics as M

log = logging.getLogger(__name__)

SAMPLES_DIR = Path(__file__).parent / "samples"
_REPO_ROOT = Path(__file__).resolve().parent.parent


class DataError(ValueError):
    """Malformed task data; the message is one line naming the file and line."""


class UnknownTaskError(KeyError, ValueError):
    """get_task() got a name that is not registered."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


@dataclass
class Example:
    id: str  # "<task>-<row index>", never the question text (SQuAD repeats questions)
    question: str
    references: list[str]
    meta: dict = field(default_factory=dict)


class LoadedExamples(list):
    """A list of Examples that also records where it came from."""

    def __init__(self, items: Iterable[Example], source: str, location: str, split: str,
                 dropped: list[str], prompt_txt: str):
        super().__init__(items)
        self.source = source          # "local" | "hub" | "sample"
        self.location = location      # file path or hub id
        self.split = split
        self.dropped = dropped        # ids dropped as few-shot demo leaks
        self.prompt_txt = prompt_txt


# ------------------------------------------------------------------ hygiene

_DEMO_RE = re.compile(r"Question:[ \t]*\n?(.*?)\n(?:Answer:|Let's think step by step)", re.S)


def _qkey(q: str) -> str:
    # Whitespace-insensitive: SQuAD demos put "context question" on one line
    # while the data has "context\nquestion".
    return " ".join(q.split())


def demo_questions(prompt_txt: str) -> list[str]:
    """The few-shot demo questions in a prompt ("Question: ...\\nAnswer:" blocks)."""
    return [_qkey(q) for q in _DEMO_RE.findall(prompt_txt)]


def drop_demo_leaks(examples: list[Example], prompt_txt: str) -> tuple[list[Example], list[Example]]:
    """Split examples into (kept, dropped): dropped ones ask a few-shot demo question
    (compared with whitespace collapsed)."""
    demos = set(demo_questions(prompt_txt))
    kept = [e for e in examples if _qkey(e.question) not in demos]
    dropped = [e for e in examples if _qkey(e.question) in demos]
    return kept, dropped


# ------------------------------------------------------------------ helpers

def data_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Candidate local data folders, in search order (see the module docstring)."""
    if data_dir is not None:
        return [Path(data_dir)]
    if os.environ.get("ADAFUSE_DATA"):
        return [Path(os.environ["ADAFUSE_DATA"])]
    out: list[Path] = []
    for base in (Path.cwd(), _REPO_ROOT):
        for rel in ("../shared/data", "shared/data", "data"):
            p = (base / rel).resolve()
            if p not in out:
                out.append(p)
    return out


def _first_line(text: str) -> str:
    """First non-empty line, stripped (the paper's models answer in one line;
    SQuAD demos put the answer on the line after "Answer:")."""
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")


def _field(rec: dict, key: str) -> Any:
    """A record value, flat or nested under "metrics" (run records nest them)."""
    if key in rec:
        return rec[key]
    return rec.get("metrics", {}).get(key)


def _mean(records: list[dict], key: str) -> float | None:
    vals = [float(_field(r, key)) for r in records]
    return sum(vals) / len(vals) if vals else None


def _hub_load(path: str, name: str | None, split: str):
    import datasets  # optional dependency (pip install adafuse-lab[hub])
    return datasets.load_dataset(path, name, split=split)


def _dedup(xs: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(x for x in xs if isinstance(x, str) and x.strip()))


# --------------------------------------------------------------------- tasks

class Task:
    """One benchmark task. Subclasses set the prompt suffix, stop rules and scoring."""

    kind = "qa"
    suffix = "\n\nQuestion: {q}\nAnswer:"
    # Plain substrings a decoder may stop at; `stop_fn` applies these AND the
    # task's extra rules, so decoders should call `stop_fn`.
    stop_strings: tuple[str, ...] = ("\n\nQuestion:", "\nQuestion:")
    metric_keys: tuple[str, ...] = ()
    paper_metric = ""
    # hub split for our "dev" / "test" names; any other split name goes to the hub as is.
    hub_splits = {"dev": "train", "test": "validation"}

    def __init__(self, name: str, hub_id: str, description: str):
        self.name, self.hub_id, self.description = name, hub_id, description
        self._prompt_txt: str | None = None
        self.last_load: LoadedExamples | None = None

    def __repr__(self) -> str:
        return f"<Task {self.name} ({self.kind})>"

    # ---- prompts
    @property
    def prompt_txt(self) -> str:
        """The few-shot/instruction prefix: from the last local load, else the
        embedded copy of the paper's prompt.txt."""
        if self._prompt_txt is None:
            self._prompt_txt = (SAMPLES_DIR / self.name / "prompt.txt").read_text(encoding="utf-8")
        return self._prompt_txt

    def prompt(self, example: Example, chat_tokenizer=None) -> str:
        """The paper's prompt: prompt.txt verbatim (as the official code reads it,
        trailing newline included) + the task suffix. With `chat_tokenizer`, the
        same text becomes one user message with the generation prompt appended."""
        text = self.prompt_txt + self.suffix.replace("{q}", example.question)
        if chat_tokenizer is None:
            return text
        if not getattr(chat_tokenizer, "chat_template", None):
            raise ValueError(f"{type(chat_tokenizer).__name__} has no chat template; pass chat_tokenizer=None for plain prompts")
        return chat_tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                  tokenize=False, add_generation_prompt=True)

    # ---- stopping and answers
    def _extra_cut(self, text: str) -> int | None:
        # QA/FLORES: a blank line once the answer has started (a leading blank
        # line is tolerated: SQuAD demos answer on the line after "Answer:").
        m = re.search(r"\S", text)
        b = re.search(r"\n[ \t]*\n", text[m.start():]) if m else None
        return m.start() + b.start() if b else None

    def stop_fn(self, text: str) -> int | None:
        """Index in the continuation `text` to cut at (exclusive), or None to go on."""
        cuts = [i for s in self.stop_strings if (i := text.find(s)) >= 0]
        extra = self._extra_cut(text)
        if extra is not None:
            cuts.append(extra)
        return min(cuts) if cuts else None

    def truncate(self, text: str) -> str:
        cut = self.stop_fn(text)
        return text if cut is None else text[:cut]

    def postprocess(self, prediction: str | None) -> str:
        """The answer string scored: first non-empty line of the cut continuation."""
        return _first_line(self.truncate(prediction or ""))

    def score(self, example: Example, prediction: str | None) -> dict:
        raise NotImplementedError

    def aggregate(self, records: list[dict]) -> dict:
        """Mean of each metric key over records (flat or nested under "metrics")."""
        return {"n": len(records), **{k: _mean(records, k) for k in self.metric_keys}}

    # ---- loading
    def _convert(self, row: dict, where: str) -> tuple[list[str], dict]:
        """(references, meta) from a validated row; subclasses add task rules."""
        ans = row["answer"]
        refs = [ans] if isinstance(ans, str) else ans
        meta = {"source_id": row["id"]} if "id" in row else {}
        return refs, meta

    def _examples(self, rows: Iterable[tuple[int, Any]], where: str) -> list[Example]:
        out = []
        for idx, (line, row) in enumerate(rows):
            at = f"{where}:{line}"
            if not isinstance(row, dict):
                raise DataError(f"{at}: expected a JSON object, got {type(row).__name__}")
            for key in ("question", "answer"):
                if key not in row:
                    raise DataError(f"{at}: missing field '{key}'")
            q, ans = row["question"], row["answer"]
            if not isinstance(q, str):
                raise DataError(f"{at}: 'question' must be a string, got {type(q).__name__}")
            if not q.strip():
                raise DataError(f"{at}: empty question")
            if isinstance(ans, list):
                if not ans or not all(isinstance(a, str) for a in ans):
                    raise DataError(f"{at}: 'answer' must be a non-empty list of strings")
            elif not isinstance(ans, str):
                raise DataError(f"{at}: 'answer' must be a string or a list of strings, got {type(ans).__name__}")
            if "id" in row and not isinstance(row["id"], (int, str)):
                raise DataError(f"{at}: 'id' must be an int or a string")
            refs, meta = self._convert(row, at)
            if not any(r.strip() for r in refs):
                raise DataError(f"{at}: empty answer")
            out.append(Example(f"{self.name}-{idx:04d}", q, refs, meta))
        return out

    def _read_jsonl(self, path: Path) -> list[Example]:
        def rows():
            try:
                data = path.read_bytes()
            except OSError as e:
                raise DataError(f"{path}: cannot read it ({e.strerror})") from None
            for n, raw in enumerate(data.splitlines(keepends=True), start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}:{n}: not UTF-8 text (byte {e.start} of the line); "
                                    "save the file as UTF-8") from None
                if not line.strip():
                    continue  # blank lines (e.g. a trailing one) carry no example
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{n}: invalid JSON ({e.msg}, column {e.colno})") from None
        return self._examples(rows(), str(path))

    def _find_local(self, data_dir, split: str) -> Path | None:
        return next((d / self.name for d in data_dirs(data_dir)
                     if (d / self.name / f"{split}.jsonl").is_file()), None)

    def _hub_rows(self, split: str) -> list[dict]:
        raise NotImplementedError

    def load(self, source: str = "auto", data_dir: str | os.PathLike | None = None,
             limit: int | None = None, split: str = "dev", drop_leaks: bool = True) -> LoadedExamples:
        """Load examples.

        split: "dev" or "test" (`<task>/<split>.jsonl` locally; hub_splits names the hub's).
        source: "local" (folder layout above), "hub" (datasets.load_dataset; the
        embedded paper prompt is used), "sample" (the ~8 toy examples shipped in
        adafuse_lab/samples/<task>/; dev only), or "auto": local if found,
        else the hub if `datasets` is installed and the hub answers (skipped when
        HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set), else the samples. The result's
        `.source`/`.location` say which was used (also logged; falling back to the
        samples logs a warning; for any split but dev there is no sample fallback, and a
        missing split raises FileNotFoundError).
        drop_leaks: drop items whose question is a few-shot demo question, whatever the split
        (`.dropped` lists their ids); `limit` then keeps the first `limit` items.
        Ids are row indices in the source, so they stay stable across limits.
        """
        if source not in ("auto", "local", "hub", "sample"):
            raise ValueError(f"source must be auto, local, hub or sample, got {source!r}")
        if limit is not None and (not isinstance(limit, numbers.Integral) or isinstance(limit, bool) or limit < 0):
            # examples[:-1] would drop the last example, [:True] keep one, [:2.5] raise a TypeError
            raise ValueError(f"limit must be a whole number >= 0 or None (all examples), got {limit!r}")
        if not isinstance(split, str) or not split:
            raise ValueError(f"split must be 'dev' or 'test', got {split!r}")
        requested = source
        prompt_txt, examples = None, None
        if source in ("auto", "local"):
            folder = self._find_local(data_dir, split)
            if folder is not None:
                source, location = "local", str(folder / f"{split}.jsonl")
                examples = self._read_jsonl(folder / f"{split}.jsonl")
                if (folder / "prompt.txt").is_file():
                    try:
                        prompt_txt = (folder / "prompt.txt").read_text(encoding="utf-8")
                    except UnicodeDecodeError as e:
                        raise DataError(f"{folder / 'prompt.txt'}: not UTF-8 text (byte {e.start}); "
                                        "save the file as UTF-8") from None
                elif (folder / "prompt.txt").exists():
                    raise DataError(f"{folder / 'prompt.txt'} is not a file; make it the task's prompt text "
                                    "(or remove it to use the embedded paper prompt)")
                else:
                    log.warning("%s: no prompt.txt in %s, using the embedded paper prompt", self.name, folder)
            elif source == "local" or data_dir is not None or os.environ.get("ADAFUSE_DATA"):
                # an explicit folder (data_dir, $ADAFUSE_DATA) is used or refused, never skipped
                looked = ", ".join(str(d / self.name / f"{split}.jsonl") for d in data_dirs(data_dir))
                raise FileNotFoundError(f"{self.name}: no local data; looked for {looked}")
        if examples is None and source in ("auto", "hub"):
            offline = any(os.environ.get(v, "0") not in ("", "0") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
            hub_split = self.hub_splits.get(split, split)
            if source == "hub" or not offline:
                try:
                    examples = self._examples(enumerate(self._hub_rows(hub_split), start=1),
                                              f"{self.hub_id}[{hub_split}]")
                    source, location = "hub", f"{self.hub_id}[{hub_split}]"
                except DataError:
                    raise
                except Exception as e:  # not installed, unreachable, gated, ...
                    if source == "hub":
                        raise RuntimeError(f"{self.name}: could not load {self.hub_id} from the hub: {e}") from e
                    log.warning("%s: hub unavailable (%s: %s)", self.name, type(e).__name__, str(e)[:200])
        if examples is None:
            if split != "dev":  # the embedded samples are toy dev data: never a stand-in for another split
                if source == "sample":
                    raise FileNotFoundError(f"{self.name}: the embedded samples have only a dev split, not {split!r}")
                looked = ", ".join(str(d / self.name / f"{split}.jsonl") for d in data_dirs(data_dir))
                raise FileNotFoundError(f"{self.name}: no {split} split: looked for {looked}, and the hub was "
                                        "skipped or did not answer (the embedded samples have only a dev split)")
            folder = SAMPLES_DIR / self.name
            source, location = "sample", str(folder / "dev.jsonl")
            examples = self._read_jsonl(folder / "dev.jsonl")
            if requested == "auto":
                log.warning("%s: no local data and no hub: using the %d embedded sample examples "
                            "(toy data, not a benchmark)", self.name, len(examples))
        if prompt_txt is None:
            prompt_txt = (SAMPLES_DIR / self.name / "prompt.txt").read_text(encoding="utf-8")
        dropped: list[Example] = []
        if drop_leaks:
            examples, dropped = drop_demo_leaks(examples, prompt_txt)
        if limit is not None:
            examples = examples[:limit]
        self._prompt_txt = prompt_txt
        out = LoadedExamples(examples, source, location, split, [e.id for e in dropped], prompt_txt)
        log.info("%s: %d examples from %s (%s); dropped %d demo leaks",
                 self.name, len(out), source, location, len(dropped))
        self.last_load = out
        return out


class QATask(Task):
    kind = "qa"
    metric_keys = ("exact_match", "f1", "lenient")
    paper_metric = "lenient"

    def __init__(self, name, hub_id, description, hub_rows: Callable[[str], list[dict]], len_slack: int = 1):
        super().__init__(name, hub_id, description)
        self._hub_rows_fn = hub_rows
        self.len_slack = len_slack  # lenient-match length slack of the official scorer

    def _hub_rows(self, split):
        return self._hub_rows_fn(split)

    def score(self, example: Example, prediction: str | None) -> dict:
        ans, refs = self.postprocess(prediction), example.references
        return {"exact_match": M.exact_match(ans, refs), "f1": M.f1(ans, refs),
                "lenient": M.lenient(ans, refs, self.len_slack), "answer": ans}


class GSM8KTask(Task):
    kind = "math"
    suffix = "\n\nQuestion: {q}\nLet's think step by step\n"
    stop_strings = ("\n\nQuestion:", "Question:")
    metric_keys = ("exact_match", "upstream_compatible")
    paper_metric = "exact_match"
    hub_splits = {"dev": "train", "test": "test"}

    def _extra_cut(self, text):
        return M.boxed_end(text)  # keep the closed \boxed{...}, cut right after it

    def postprocess(self, prediction):
        return self.truncate(prediction or "")  # the whole chain of thought

    def _convert(self, row, where):
        ans = row["answer"] if isinstance(row["answer"], str) else row["answer"][0]
        gold = M.gsm8k_gold(ans)
        if gold is None:
            raise DataError(f"{where}: no number in the gold answer")
        meta = {"solution": ans, **({"source_id": row["id"]} if "id" in row else {})}
        return [gold], meta

    def _hub_rows(self, split):
        return [{"question": r["question"], "answer": r["answer"]}
                for r in _hub_load("openai/gsm8k", "main", split)]

    def score(self, example: Example, prediction: str | None) -> dict:
        text = self.postprocess(prediction)
        gold = example.references[0]
        return {"exact_match": float(M.gsm8k_strict(text, gold)),
                "upstream_compatible": float(M.gsm8k_upstream_compatible(text, example.meta.get("solution", gold))),
                "answer": M.extract_gsm8k_answer(text)}

    def aggregate(self, records):
        out = super().aggregate(records)
        out["no_answer"] = (sum(_field(r, "answer") is None for r in records) / len(records)) if records else None
        return out


class FloresTask(Task):
    kind = "mt"
    metric_keys = ("bleu", "chrf", "spbleu")
    paper_metric = "spbleu"
    hub_splits = {"dev": "dev", "test": "devtest"}
    LANGS = {"en": "eng_Latn", "de": "deu_Latn", "ro": "ron_Latn"}

    def __init__(self, src: str, tgt: str):
        super().__init__(f"flores_{src}-{tgt}", "openlanguagedata/flores_plus",
                         f"FLORES-200 {src}->{tgt} translation")
        self.src, self.tgt = src, tgt

    def _hub_rows(self, split):
        def side(lang):
            code = self.LANGS[lang]
            try:
                ds = _hub_load("openlanguagedata/flores_plus", code, split)
            except Exception:
                ds = _hub_load("facebook/flores", code, split)  # older mirror, "sentence" field
            return {r["id"]: r.get("text", r.get("sentence")) for r in ds}
        src, tgt = side(self.src), side(self.tgt)
        return [{"id": i, "question": s, "answer": tgt[i]} for i, s in src.items() if i in tgt]

    def score(self, example: Example, prediction: str | None) -> dict:
        ans = self.postprocess(prediction)
        return {**M.sentence_translation_scores(ans, example.references), "answer": ans}

    def aggregate(self, records):
        """Corpus BLEU (13a), chrF++ and spBLEU (when cached) with signatures.
        Records need "answer" (from score) and "references"; an empty answer
        counts as an empty hypothesis."""
        if not records:
            return {"n": 0, "bleu": None, "chrf": None, "spbleu": None}
        hyps = [_field(r, "answer") or "" for r in records]
        refs = [r["references"] for r in records]
        return {"n": len(records), **M.corpus_translation_scores(hyps, refs)}


# ------------------------------------------------------------ hub mappings

def _hub_triviaqa(split):
    rows = []
    for r in _hub_load("mandarjoshi/trivia_qa", "rc.wikipedia.nocontext", split):
        a = r["answer"]
        rows.append({"question": r["question"], "answer": _dedup([a.get("value"), *a.get("aliases", [])])})
    return rows


def _hub_nq(split):
    return [{"question": r["question"], "answer": list(r["answer"])}
            for r in _hub_load("google-research-datasets/nq_open", "nq_open", split)]


def _hub_squad(split):
    # Same layout as the paper's files: context, newline, question.
    return [{"question": r["context"].strip() + "\n" + r["question"].strip(),
             "answer": _dedup(r["answers"]["text"]), "id": r["id"]}
            for r in _hub_load("rajpurkar/squad", "plain_text", split)]


TASKS: dict[str, Task] = {t.name: t for t in [
    GSM8KTask("gsm8k", "openai/gsm8k", "GSM8K grade-school math, chain of thought"),
    QATask("triviaqa", "mandarjoshi/trivia_qa", "TriviaQA (Wikipedia, no context)", _hub_triviaqa, len_slack=1),
    QATask("nq", "google-research-datasets/nq_open", "Natural Questions (open)", _hub_nq, len_slack=1),
    QATask("squad", "rajpurkar/squad", "SQuAD v1.1 (context in the question)", _hub_squad, len_slack=5),
    FloresTask("en", "de"),
    FloresTask("de", "en"),
    FloresTask("en", "ro"),
]}


def get_task(name: str) -> Task:
    """The registered task called `name` (case-insensitive)."""
    if not isinstance(name, str):
        raise UnknownTaskError(f"task must be a name, one of {', '.join(TASKS)}; got {name!r}")
    key = name.strip().lower()
    if key in TASKS:
        return TASKS[key]
    close = difflib.get_close_matches(key, TASKS, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownTaskError(f"unknown task {name!r}.{hint} Valid tasks: {', '.join(TASKS)}")


__all__ = ["DataError", "UnknownTaskError", "Example", "LoadedExamples", "Task", "QATask", "GSM8KTask", "FloresTask",
           "TASKS", "get_task", "data_dirs", "demo_questions", "drop_demo_leaks", "SAMPLES_DIR"]
