"""Wrong inputs to the Python API (decode, DecodeConfig, load_session, Task.load): one
ConfigError/ValueError naming the problem before any model work, never a TypeError from deep
inside, a decode that runs something else than was asked, or a silently wrong answer.
(The command line's table of wrong inputs is tests/test_bad_inputs.py.)"""
from __future__ import annotations

import numpy as np
import pytest

from adafuse_lab.decoding import ConfigError, DecodeConfig, decode, decode_iter
from adafuse_lab.models import load_session


@pytest.fixture(scope="module")
def pair():
    return [load_session("tiny:bpe"), load_session("tiny:spm")]


@pytest.fixture
def no_model_work(pair, monkeypatch):
    """Any forward of a member fails the test: the refusal must come first."""
    for m in pair:
        monkeypatch.setattr(m.model, "forward", lambda *a, **k: pytest.fail("a model ran before the refusal"))
    return pair


@pytest.mark.parametrize("kw, msg", [
    (dict(theta="0.5"), "theta must be a finite number"),
    (dict(theta=None), "theta must be a finite number, got null"),
    (dict(theta=True), "theta must be a finite number"),
    (dict(max_new_tokens=2.5), "max_new_tokens must be a whole number"),
    (dict(max_new_tokens=float("inf")), "max_new_tokens must be a whole number"),
    (dict(max_new_tokens=True), "max_new_tokens must be a whole number"),
    (dict(batch_size=1.5), "batch_size must be a whole number"),
    (dict(batch_size="2"), "batch_size must be a whole number"),
    (dict(M=2.5), "M must be a whole number"),
    (dict(B="2"), "B must be a whole number"),
    (dict(span_words=2.5), "span_words must be a whole number or null"),
    (dict(member=True), "member must be a whole number"),
    (dict(unite_k=2.5), "unite_k must be a whole number"),
    (dict(diversity_lambda=float("nan")), "diversity_lambda must be a finite number"),
    (dict(diversity_lambda="x"), "diversity_lambda must be a finite number"),
    (dict(dyn_position_slope=float("nan")), "dyn_position_slope must be a finite number"),
    (dict(outlier_ratio=float("inf")), "outlier_ratio must be a finite number"),
    (dict(gac_threshold="0.5"), "gac_threshold must be a finite number or null"),
    (dict(weights=(float("nan"), 1.0)), "weights must be a list of finite numbers"),
    (dict(weights="ab"), "weights must be a list of finite numbers"),
    (dict(weights=5), "weights must be a list of finite numbers"),
])
def test_config_refuses_wrong_types(kw, msg):
    with pytest.raises(ConfigError, match=msg) as e:
        DecodeConfig(**kw)
    assert "\n" not in str(e.value)


def test_config_keeps_numpy_and_list_values_as_plain_python():
    cfg = DecodeConfig(M=np.int64(2), theta=np.float64(0.5), weights=[1, 2])
    assert type(cfg.M) is int and cfg.weights == (1.0, 2.0)
    hash(cfg)  # a list would make the frozen config unhashable


@pytest.mark.parametrize("args, msg", [
    (dict(prompts="The cat"), "prompts must be a list of strings, got one string"),
    (dict(prompts=["ok", 123]), "prompt 1 is int 123, not a string"),
    (dict(prompts=[None]), "prompt 0 is NoneType None, not a string"),
    (dict(prompts=[""]), "prompt 0 is empty: tiny:bpe has no BOS token"),
    (dict(prompts=["hello world " * 2000]), "prompt 0 is .* tokens but tiny:bpe has a context of 2048"),
    (dict(members="tiny:bpe"), "members must be a list of sessions"),
    (dict(members=["tiny:bpe", "tiny:spm"]), r"member 0 is not a session .* load_session\('tiny:bpe'\)"),
    (dict(method=None), "method must be a string"),
    (dict(cfg={"theta": 0.5}), "cfg must be a DecodeConfig"),
    (dict(cfg=DecodeConfig(weights=(1.0, 2.0, 3.0))), r"weights has 3 value\(s\) for 2 member\(s\)"),
    (dict(method="unite", cfg=DecodeConfig(weights=(1.0,))), r"weights has 1 value\(s\) for 2 member\(s\)"),
    (dict(stop=[""]), "stop strings must be non-empty strings, got ''"),
    (dict(stop=["x", None]), "stop strings must be non-empty strings, got None"),
    (dict(stop=5), "stop must be a function"),
])
@pytest.mark.parametrize("api", [decode, decode_iter])
def test_decode_refuses_before_model_work(no_model_work, api, args, msg):
    kw = dict(method="adafuse", members=no_model_work, prompts=["The cat sat on the"],
              cfg=DecodeConfig(max_new_tokens=4), stop=None)
    kw.update(args)
    with pytest.raises(ConfigError, match=msg) as e:
        api(kw["method"], kw["members"], kw["prompts"], kw["cfg"], kw["stop"])  # decode_iter: at the call
    assert "\n" not in str(e.value)


def test_one_session_not_in_a_list(no_model_work):
    with pytest.raises(ConfigError, match=r"give \[session\] for one member"):
        decode("single", no_model_work[0], ["x"])


def test_one_stop_string_is_one_stop_not_its_characters(pair):
    """stop="Question:" used to cut at the first Q, u, e, s, t, i, o, n or ':' of the answer."""
    prompts, cfg = ["The cat sat on the", "Question: 2 + 2?\nAnswer:"], DecodeConfig(max_new_tokens=12)
    as_list = [o.text for o in decode("adafuse", pair, prompts, cfg, stop=["Question:"])]
    assert [o.text for o in decode("adafuse", pair, prompts, cfg, stop="Question:")] == as_list
    assert as_list == [o.text for o in decode("adafuse", pair, prompts, cfg)]  # no "Question:" in them


def test_prompts_from_a_generator_or_tuple(pair):
    cfg = DecodeConfig(max_new_tokens=3)
    want = [o.text for o in decode("adafuse", pair, ["a b", "c d"], cfg)]
    assert [o.text for o in decode("adafuse", pair, (p for p in ["a b", "c d"]), cfg)] == want
    assert [o.text for o in decode("adafuse", pair, ("a b", "c d"), cfg)] == want
    got = dict(decode_iter("adafuse", pair, iter(["a b", "c d"]), cfg))
    assert [got[i].text for i in range(2)] == want


# ---- load_session: checked before anything is built or loaded

@pytest.mark.parametrize("spec, kw, err, msg", [
    ("", {}, ValueError, "model spec must be a non-empty string"),  # was Path(""): the current folder
    (None, {}, ValueError, "model spec must be a non-empty string"),
    ("tiny:bpe", dict(device="gpu"), ValueError, "unknown device 'gpu'"),
    ("tiny:bpe", dict(dtype="fp33"), ValueError, "unknown dtype 'fp33'"),
    ("tiny:bpe", dict(dtype=3), ValueError, "dtype must be a torch.dtype"),
])
def test_load_session_refuses(spec, kw, err, msg):
    with pytest.raises(err, match=msg) as e:
        load_session(spec, **kw)
    assert "\n" not in str(e.value)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks a machine without CUDA")
def test_load_session_cuda_without_cuda():
    with pytest.raises(ValueError, match="CUDA is not available"):  # was torch's AssertionError
        load_session("tiny:bpe", device="cuda")


def test_load_session_folder_without_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="holds no model: expected config.json"):
        load_session(str(tmp_path))  # was transformers' "Couldn't instantiate the backend tokenizer ..."
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_session(tmp_path / "missing")  # a Path is a path, not an AttributeError


def test_load_session_dtype_by_name():
    import torch
    assert load_session("tiny:bpe", dtype="float32").dtype == torch.float32


# ---- tasks

@pytest.mark.parametrize("limit", [-1, 2.5, "3", True, float("nan")])
def test_task_load_refuses_a_wrong_limit(limit):
    """limit=-1 used to drop the last example ([:-1]) and limit=True to keep one."""
    from adafuse_lab.tasks import get_task
    with pytest.raises(ValueError, match="limit must be a whole number >= 0"):
        get_task("triviaqa").load(source="sample", limit=limit)


def test_task_load_limits_that_work():
    from adafuse_lab.tasks import get_task
    t = get_task("triviaqa")
    assert len(t.load(source="sample", limit=0)) == 0 and len(t.load(source="sample", limit=np.int64(2))) == 2


def test_get_task_of_a_non_name():
    from adafuse_lab.tasks import UnknownTaskError, get_task
    with pytest.raises(UnknownTaskError, match="task must be a name"):
        get_task(None)


# ---- notebooks: a wrong parameter is one line in the first cell, before any model loads

@pytest.mark.parametrize("values, msg", [
    (dict(models="tiny:bpe,nosuchmodel"), "unknown model 'nosuchmodel'"),  # was load_session's traceback, cells later
    (dict(limit=-2), "limit must be >= 1"),
    (dict(theta=1.5), r"theta\(s\) must be in \[0, 1\]"),
])
def test_notebook_parameter_error_is_one_line(values, msg):
    from adafuse_lab import plans
    with pytest.raises(plans.ParameterError, match=msg) as e:
        plans.notebook_params("00_quickstart", "cpu", **values)
    shown = e.value._render_traceback_()  # what IPython (and papermill's error) shows instead of a traceback
    assert len(shown) == 1 and "\n" not in shown[0] and isinstance(e.value, ValueError)


def _settings():
    from adafuse_lab.plans import NotebookParams
    from adafuse_lab.runs import RunConfig
    return [DecodeConfig, NotebookParams, lambda **kw: RunConfig(task="triviaqa", models=("tiny:bpe",), **kw)]


def test_every_settings_class_takes_numpy_whole_numbers_as_ints():
    """RunConfig, NotebookParams and DecodeConfig share one type check (adafuse_lab.fields)."""
    for make in _settings():
        obj = make(batch_size=np.int64(4))
        assert type(obj.batch_size) is int and obj.batch_size == 4


@pytest.mark.parametrize("kw, msg", [
    (dict(batch_size=2.5), "batch_size must be a whole number, got 2.5"),
    (dict(batch_size=True), "batch_size must be a whole number, got true"),
    (dict(max_new_tokens="8"), "max_new_tokens must be a whole number, got '8'"),
])
def test_every_settings_class_refuses_a_wrong_type_in_the_same_words(kw, msg):
    for make in _settings():
        with pytest.raises(ValueError, match=msg):
            make(**kw)
