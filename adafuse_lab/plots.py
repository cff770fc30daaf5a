"""Figures for the notebooks: one style, one method -> colour mapping, stable files.

Every notebook calls ``style()`` once and saves through ``save()``, which writes
PNG and PDF without timestamps or version strings, so re-running a notebook on
the same data gives byte-identical figures. The functions taking a ``theta`` or
a question index are what the notebooks' widgets call.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import matplotlib
import matplotlib.patches
import matplotlib.ticker
import numpy as np

# Okabe-Ito based, colour-blind safe. One entry per method, ablation variant and member.
METHOD_COLORS: dict[str, str] = {
    "adafuse": "#D55E00",
    "adafuse-distinct": "#E69F00",
    "adafuse-semantic": "#CC79A7",
    "adafuse-fixed": "#8C510A",
    "sweetspan": "#0072B2",
    "coolfusion": "#56B4E9",
    "unite": "#009E73",
    "gac": "#66A61E",
    "rerank": "#7570B3",
    "single": "#7F7F7F",
    "member0": "#332288",
    "member1": "#44AA99",
    "member2": "#999933",
    "member3": "#882255",
    "shared": "#BBBBBB",
}
TASK_COLORS: dict[str, str] = {
    "gsm8k": "#D55E00", "triviaqa": "#0072B2", "nq": "#56B4E9", "squad": "#009E73",
    "flores_en-de": "#CC79A7", "flores_de-en": "#7570B3", "flores_en-ro": "#E69F00",
}
_FALLBACK = "#7F7F7F"

# PNG: drop "Software" (matplotlib version); PDF: no dates, producer or creator.
PNG_METADATA = {"Software": None}
PDF_METADATA = {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}


def color(name: str, models: Sequence[str] | None = None) -> str:
    """The colour of a method, ablation variant ("adafuse-..."), member ("member0") or task.

    "single: <model>" labels take their member's colour when `models` lists it."""
    if name in METHOD_COLORS:
        return METHOD_COLORS[name]
    if name in TASK_COLORS:
        return TASK_COLORS[name]
    if name.startswith("single"):
        model = name.partition(":")[2].strip()
        if models and model in models:
            return METHOD_COLORS.get(f"member{list(models).index(model)}", _FALLBACK)
        return METHOD_COLORS["single"]
    if name.startswith("adafuse"):
        return METHOD_COLORS["adafuse"]
    return _FALLBACK


def style() -> None:
    """The one figure style of the project (matplotlib only, no seaborn theme)."""
    matplotlib.rcParams.update({
        "figure.figsize": (6.4, 4.0), "figure.dpi": 100, "savefig.dpi": 150, "savefig.bbox": "tight",
        "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 8,
        "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
        "lines.linewidth": 1.6, "lines.markersize": 5, "legend.frameon": False,
        "pdf.fonttype": 42, "svg.hashsalt": "adafuse-lab", "image.cmap": "viridis",
    })


def save(fig, name: str, fig_dir, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write fig_dir/name.png and .pdf with stable metadata; returns the paths."""
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for fmt in formats:
        path = fig_dir / f"{name}.{fmt}"
        md = PNG_METADATA if fmt == "png" else PDF_METADATA if fmt == "pdf" else None
        fig.savefig(path, format=fmt, metadata=md)
        out.append(path)
    return out


def _plt():
    import matplotlib.pyplot as plt
    return plt


def show(fig):
    """Display a figure once (in a notebook or a widget's output) and close it; returns it,
    still savable. Widget callbacks end with `return plots.show(fig)`."""
    try:
        from IPython.display import display
        display(fig)
    except ImportError:  # pragma: no cover - IPython comes with the notebook extra
        pass
    _plt().close(fig)
    return fig


HEADLESS_ENV = "ADAFUSE_HEADLESS"  # set to 1 by the figures command for the kernels it starts


def control(value, *, min=None, max=None, step=None, options=None, description: str | None = None) -> dict:
    """A widget's description for `interact`: a slider (numbers with min/max), or a dropdown
    (options). Only turned into an ipywidget when a front end is there to show it."""
    return {"value": value, "min": min, "max": max, "step": step, "options": options, "description": description}


def _widget(name: str, spec: dict):
    import ipywidgets as W
    desc = spec["description"] or name
    if spec["options"] is not None:
        return W.Dropdown(options=list(spec["options"]), value=spec["value"], description=desc)
    kw = {k: spec[k] for k in ("min", "max", "step") if spec[k] is not None}
    cls = W.IntSlider if isinstance(spec["value"], int) and not isinstance(spec["step"], float) else W.FloatSlider
    # continuous_update off: the function runs when the slider is released, not on every step
    return cls(value=spec["value"], description=desc, continuous_update=False, **kw)


def png(fig) -> bytes:
    """A figure as PNG bytes (the same settings as save(), no metadata)."""
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata=PNG_METADATA)
    return buf.getvalue()


def _parts(result) -> tuple:
    """(figure or None, html or None) of what a widget function returned: a figure, or a dict
    with "figure" and/or "html"."""
    if isinstance(result, dict):
        return result.get("figure"), result.get("html")
    return result, None


def _show_result(result) -> None:
    """Display a widget function's figure and HTML as ordinary cell output."""
    from IPython.display import HTML, display
    fig, page = _parts(result)
    if page:
        display(HTML(page))
    if fig is not None:
        show(fig)


class Headless:
    """What `interact` returns without a front end: the function's value for the defaults."""

    def __init__(self, kwargs: dict, result):
        self.kwargs, self.result = kwargs, result


class Interactive:
    """Controls over an image of the function's figure, and its HTML.

    The figure reaches the page as PNG bytes in an ipywidgets Image, so no plotting backend or
    captured Output is involved: each change replaces the image whole. While the function runs
    the controls are disabled and the status line says so; a failure shows its traceback
    under the controls and keeps the last good figure."""

    def __init__(self, fn, controls: dict):
        import ipywidgets as W
        self.fn = fn
        self.controls = {k: _widget(k, c) for k, c in controls.items()}
        self.status = W.HTML()
        self.page = W.HTML()
        self.image = W.Image(format="png", layout=W.Layout(max_width="100%"))
        self.errors = W.Output()
        self.result = None
        self.seconds = None
        self.widget = W.VBox([W.HBox(list(self.controls.values()), layout=W.Layout(flex_flow="row wrap")),
                              self.status, self.errors, self.page, self.image])
        self.widget.add_class("adafuse-interactive")
        self.update()
        for w in self.controls.values():
            w.observe(lambda change: self.update(), names="value")

    @property
    def kwargs(self) -> dict:
        return {k: w.value for k, w in self.controls.items()}

    def update(self) -> None:
        import time
        import traceback
        for w in self.controls.values():
            w.disabled = True
        self.status.value = "<i>⏳ working ... (the controls come back when it is done)</i>"
        t = time.perf_counter()
        try:
            result = self.fn(**self.kwargs)
            fig, page = _parts(result)
            self.page.value = page or ""
            if fig is not None:
                self.image.value = png(fig)
                _plt().close(fig)
            self.result = result
            self.errors.clear_output()
            self.seconds = time.perf_counter() - t
            self.status.value = f"<small>done in {self.seconds:.1f} s</small>"
        except Exception as e:  # shown under the controls; the widget stays usable
            self.result = None
            self.status.value = f"<b style='color:#b00'>failed: {html.escape(type(e).__name__)}: {html.escape(str(e))}</b>"
            with self.errors:
                self.errors.clear_output()
                print(traceback.format_exc())
        finally:
            for w in self.controls.values():
                w.disabled = False

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget)


def interact(fn, **controls):
    """Show `fn` with one widget per `control(...)` and return the view; its `.result` is fn's
    value for the current settings. fn returns a figure, or {"figure": ..., "html": ...}.

    Headless, i.e. when $ADAFUSE_HEADLESS is 1 (the figures command sets it for papermill
    runs), no widget is made: fn runs once with the controls' values, its figure and HTML are
    shown as ordinary output, and a `Headless` stand-in comes back. Widget messages under
    papermill (ipykernel 7, nbclient 0.11) now and then leave the client waiting forever."""
    import os
    values = {k: c["value"] for k, c in controls.items()}
    if os.environ.get(HEADLESS_ENV) == "1":
        view = Headless(values, fn(**values))
        _show_result(view.result)
        return view
    view = Interactive(fn, controls)
    try:
        from IPython.display import display
        display(view)
    except ImportError:  # pragma: no cover
        pass
    return view


def widget_result(view):
    """The value `interact`'s function returned for the current settings. A failure is shown
    in the widget but keeps no exception: raise one here."""
    if getattr(view, "result", None) is None:
        raise RuntimeError("the widget's function failed or returned nothing: see the message under its controls")
    return view.result


# ---------------------------------------------------------------- one answer, round by round


def winner_key(rd: dict) -> str:
    """Colour key of a round's winner: "memberK", or "shared" when several members proposed it."""
    src = rd["candidates"][rd["winner"]]["from"]
    return f"member{src[0]}" if len(src) == 1 else "shared"


# Latin-1 marks, which every font has (⑂ and ↵ rendered as empty boxes in JupyterLab on Linux)
BRANCH_MARK = "»"  # before a round in which a member branched
NEWLINE_MARK = "¶"  # a newline in the answer


def answer_html(trace: Sequence[dict] | None, names: Sequence[str], prediction: str | None = None) -> str:
    """The answer as HTML: each round's committed text on its winner's colour, a » where a
    member branched, the round's details in the tooltip; and a legend. With `prediction`
    (the answer as cut at the task's stop), text the last rounds committed past the stop is
    shown apart, grey and struck through, not as part of the answer."""
    if not trace:
        return f"<pre>{html.escape(prediction or '')}</pre>"
    texts = [rd["candidates"][rd["winner"]]["text"] for rd in trace]
    full = "".join(texts)
    keep = len(prediction) if prediction is not None and full.startswith(prediction) else len(full)
    parts, used, cut = [], 0, ""
    for r, (rd, raw) in enumerate(zip(trace, texts)):
        if used >= keep and raw:
            cut += raw
            continue
        shown, rest = raw[:keep - used], raw[keep - used:]
        used += len(raw)
        cut += rest
        win = rd["candidates"][rd["winner"]]
        key = winner_key(rd)
        branched = [names[k] for k, m in enumerate(rd["members"]) if m["branched"]]
        tip = (f"round {r}: {len(rd['candidates'])} candidates; won by "
               f"{', '.join(names[k] for k in win['from'])}; branched: {', '.join(branched) or 'none'}; "
               f"confidence at start: " + ", ".join(f"{names[k]} {m['conf'][0]:.2f}" for k, m in
                                                     enumerate(rd["members"]) if m["conf"]))
        mark = f"<b style='color:#000'>{BRANCH_MARK}</b>" if branched else ""
        text = (html.escape(shown).replace("\n", f"{NEWLINE_MARK}<br>")
                + ("<small style='color:#555'>[end]</small>" if win["eos"] and not rest else ""))
        parts.append(f"{mark}<span title='{html.escape(tip, quote=True)}' style='background:{color(key)}33;"
                     f"border-bottom:2px solid {color(key)}'>{text}</span>")
    if cut:
        parts.append(f"<span title='decoded past the stop: not part of the answer' style='color:#999;"
                     f"text-decoration:line-through'>{html.escape(cut).replace(chr(10), NEWLINE_MARK)}</span>"
                     f"<small style='color:#999'> (past the stop)</small>")
    legend = " ".join(f"<span style='background:{color(f'member{k}')}33;border-bottom:2px solid "
                      f"{color(f'member{k}')}'>{html.escape(n)}</span>" for k, n in enumerate(names))
    legend += (f" <span style='background:{color('shared')}33'>proposed by several</span>"
               f" <b>{BRANCH_MARK}</b> = a member branched")
    return (f"<div style='font-family:monospace;white-space:pre-wrap;line-height:1.6'>{''.join(parts)}</div>"
            f"<div style='font-size:80%;margin-top:4px'>{legend}</div>")


def plot_rounds(trace: Sequence[dict] | None, names: Sequence[str], title: str | None = None):
    """Two panels over rounds: each member's confidence at the round's first word start
    against its threshold; the committed span in words, coloured by the winning
    member, hatched where the ensemble was triggered (some member branched)."""
    from .traces import n_words
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8.0, 4.2), sharex=True, height_ratios=[1, 1])
    trace = trace or []
    x = np.arange(len(trace))
    for k, name in enumerate(names):
        conf = [rd["members"][k]["conf"][0] if rd["members"][k]["conf"] else np.nan for rd in trace]
        ax1.plot(x, conf, "o-", color=color(f"member{k}"), label=name, alpha=0.9)
    thetas = [rd["members"][0]["theta"][0] for rd in trace if rd["members"][0]["theta"]]
    if thetas:
        ax1.step(x[:len(thetas)], thetas, where="mid", color="k", ls="--", lw=1, label="θ")
    ax1.set_ylim(-0.02, 1.02)
    ax1.set_ylabel("confidence\nat round start")
    ax1.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    spans = [n_words(rd["candidates"][rd["winner"]]["text"]) for rd in trace]
    for r, rd in enumerate(trace):
        trig = any(m["branched"] for m in rd["members"])
        ax2.bar(r, spans[r], color=color(winner_key(rd)), hatch="///" if trig else None,
                edgecolor="white" if trig else color(winner_key(rd)), linewidth=0)
    ax2.set_ylabel("words committed")
    ax2.set_xlabel("round")
    ax2.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # rounds are whole numbers
    ax2.set_ylim(0, max(spans + [1]) + 0.5)
    ax2.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    handles = [matplotlib.patches.Patch(color=color(f"member{k}"), label=f"won by {n}") for k, n in enumerate(names)]
    handles += [matplotlib.patches.Patch(color=color("shared"), label="proposed by several"),
                matplotlib.patches.Patch(facecolor="white", edgecolor="k", hatch="///", label="triggered")]
    ax2.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title:
        ax1.set_title(title)
    fig.tight_layout()
    return fig


def quickstart_view(members, task, examples, theta: float = 0.7, M: int = 3, B: int = 3,
                    criterion: str = "margin", question: int = 0, max_new_tokens: int = 64) -> dict:
    """Re-decode one question with AdaFuse at (theta, M, B, criterion) and draw it.

    The quickstart's widgets call this. Returns {"output", "figure", "html", "example", "score"}:
    "html" holds the question, the gold answers, the answer and the round view."""
    from .decoding import DecodeConfig, decode
    ex = examples[int(question) % len(examples)]
    cfg = DecodeConfig(theta=float(theta), M=int(M), B=int(B), criterion=criterion,
                       max_new_tokens=int(max_new_tokens), batch_size=1)
    out = decode("adafuse", members, [task.prompt(ex)], cfg, stop=task.stop_fn)[0]
    names = [m.name for m in members]
    fig = plot_rounds(out.trace, names, title=f"θ={theta:.2f}, M={M}, B={B}, {criterion}: {ex.question[-60:]}")
    score = task.score(ex, out.text)
    page = (f"<p><b>Q:</b> {html.escape(ex.question[-300:])}<br><b>gold:</b> "
            f"{html.escape(' | '.join(ex.references[:3]))}<br><b>answer:</b> "
            f"{html.escape(str(score.get('answer')))}</p>" + answer_html(out.trace, names, out.text))
    return {"output": out, "figure": fig, "html": page, "example": ex, "score": score}


# ---------------------------------------------------------------- uncertainty


def plot_confidence_hist(words, value: str = "margin", tasks: Sequence[str] | None = None, bins: int = 20):
    """Histograms of a confidence value per member, one panel per task.
    `words`: a DataFrame with columns task, member_name, member and `value`."""
    plt = _plt()
    tasks = list(tasks or sorted(words["task"].unique()))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 2.8), squeeze=False, sharey=True)
    edges = np.linspace(0, 1, bins + 1)
    for ax, task in zip(axes[0], tasks):
        sub = words[words["task"] == task]
        for k, g in sub.groupby("member"):
            ax.hist(g[value].dropna(), bins=edges, histtype="step", density=True, lw=1.6,
                    color=color(f"member{k}"), label=str(g["member_name"].iloc[0]))
        ax.set_title(task)
        ax.set_xlabel({"margin": "Δ = p1 − p2", "entropy": "1 − H / log V"}.get(value, value))
    axes[0][0].set_ylabel("density")
    axes[0][-1].legend()
    fig.tight_layout()
    return fig


def plot_reliability(curves: dict, title: str | None = None, ylabel: str = "observed rate"):
    """Reliability curves: curves = {label: (bins from stats.reliability, colour key)}."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.plot([0, 1], [0, 1], color="k", lw=0.8, ls=":")
    for label, (bins, key) in curves.items():
        if bins:
            ax.plot([b["mean_conf"] for b in bins], [b["rate"] for b in bins], "o-", color=color(key),
                    label=label, alpha=0.85)
    ax.set_xlim(0, 1), ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("confidence (bin mean)")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def plot_auroc(table, value_cols: Sequence[str], group_col: str = "task"):
    """Grouped bars of AUROC values (rows of `table`), chance level at 0.5."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(table), 3.2))
    n = len(value_cols)
    width = 0.8 / n
    x = np.arange(len(table))
    palette = ["member0", "member1", "adafuse", "sweetspan", "unite", "rerank"]
    for i, col in enumerate(value_cols):
        xs, v = x + (i - (n - 1) / 2) * width, table[col].astype(float).to_numpy()
        c = color(palette[i % len(palette)])
        ax.bar(xs, np.nan_to_num(v), width, color=c, label=col)
        ok = np.isfinite(v)
        ax.plot(xs[ok], v[ok], "_", color="k", ms=max(3.0, 40 * width), mew=1.2)  # the value, visible at 0.00 too
        for xm in xs[~ok]:  # one class only: no AUROC, marked as missing rather than drawn as 0
            ax.text(xm, 0.02, "n/a", rotation=90, ha="center", va="bottom", fontsize=6, color="#555")
    ax.axhline(0.5, color="k", lw=0.8, ls=":")
    ax.set_xticks(x, [str(v) for v in table[group_col]], rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("AUROC")
    ax.legend(ncol=min(n, 3), loc="upper left")
    fig.tight_layout()
    return fig


def plot_catch_curves(curves: dict, title: str | None = None):
    """Trigger criteria at equal budget: curves = {label: (stats.catch_curve(...), colour key,
    line style)}; x = share of word starts triggered, y = share of the events caught."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.4, 3.8))
    ax.plot([0, 1], [0, 1], color="k", lw=0.8, ls=":")
    for label, (c, key, ls) in curves.items():
        ax.plot(c["trigger_rate"], c["recall"], ls=ls, color=color(key), label=label, drawstyle="steps-post")
    ax.set_xlim(0, 1), ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("share of word starts triggered")
    ax.set_ylabel("share of overruled words caught")
    if title:
        ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- trigger rates


def plot_trigger_curves(curves: dict, theta: float, measured: dict | None = None):
    """Three panels over theta, one line per task: ensemble trigger rate (share of rounds),
    mean committed span (words), and rounds per word relative to a one-word-per-round
    ensemble (1.0). curves[task] = {"theta", "trigger_rate", "mean_span", "rounds_per_word"}
    (and optionally "word_rate", drawn dashed); measured[task] = list of
    {"theta", "trigger_rate", "mean_span", "rounds_per_word"} from decoded runs (markers).
    A vertical line marks `theta` and the titles read the curves off there."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(11.0, 3.4))
    panels = [("trigger_rate", "ensemble trigger rate"), ("mean_span", "mean committed span (words)"),
              ("rounds_per_word", "rounds per word (fixed = 1)")]
    for ax, (key, label) in zip(axes, panels):
        reads = []
        for task, c in curves.items():
            th = np.asarray(c["theta"], dtype=float)
            y = np.asarray(c[key], dtype=float)
            ax.plot(th, y, color=color(task), label=task)
            if key == "trigger_rate" and "word_rate" in c:
                ax.plot(th, c["word_rate"], color=color(task), ls="--", lw=1)
            for m in (measured or {}).get(task, []):
                ax.plot(m["theta"], m[key], "o", color=color(task), mec="k", mew=0.6)
            if len(th) and np.isfinite(y).any():
                reads.append(f"{task} {np.interp(theta, th, y):.2f}")
        ax.axvline(theta, color="k", lw=0.8)
        ax.set_xlabel("θ")
        ax.set_title(label + (f"\nat θ={theta:.2f}: " + ", ".join(reads[:3]) if reads else ""), fontsize=8)
        ax.set_xlim(0, 1)
    axes[0].set_ylim(-0.02, 1.02)
    axes[0].legend(loc="upper left")
    fig.tight_layout()
    return fig


def plot_span_hist(spans: dict, max_span: int | None = None):
    """Distribution of committed span lengths (words) per task: spans = {task: [lengths]}."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 3.2))
    top = max_span or max([max(v) for v in spans.values() if len(v)] + [1])
    edges = np.arange(0.5, top + 1.5)
    for task, v in spans.items():
        if len(v):
            ax.hist(v, bins=edges, histtype="step", density=True, lw=1.6, color=color(task), label=task)
    ax.set_xlabel("committed span (words)")
    ax.set_ylabel("share of rounds")
    ax.legend()
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- accuracy and cost


MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "h", "<", ">")


def plot_cost_accuracy(df, x: str = "forwards", y: str = "score", label_col: str = "variant",
                       key_col: str = "color_key", task_col: str = "task"):
    """Accuracy against cost, one panel per task; error bars from the `<y> lo` / `<y> hi`
    columns; points coloured by `key_col` (a METHOD_COLORS key), one marker per label, and
    one legend for all panels (labels next to points overlap when points are close)."""
    plt = _plt()
    tasks = list(dict.fromkeys(df[task_col]))
    labels = list(dict.fromkeys(df[label_col]))
    marker = {lab: MARKERS[i % len(MARKERS)] for i, lab in enumerate(labels)}
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.0 * len(tasks) + 1.8, 3.6), squeeze=False)
    handles = {}
    for ax, task in zip(axes[0], tasks):
        sub = df[df[task_col] == task]
        for _, r in sub.iterrows():
            lo, hi = r.get(f"{y} lo", np.nan), r.get(f"{y} hi", np.nan)
            yerr = None if not (np.isfinite(lo) and np.isfinite(hi)) else [[r[y] - lo], [hi - r[y]]]
            h = ax.errorbar(r[x], r[y], yerr=yerr, fmt=marker[r[label_col]], color=color(r[key_col]), capsize=3,
                            mec="k", mew=0.5, ms=6)
            handles.setdefault(r[label_col], h)
        ax.set_title(task)
        ax.set_xlabel({"forwards": "forward passes / example", "tokens": "decoded tokens / example",
                       "seconds": "seconds / example"}.get(x, x))
        ax.set_ylabel(f"{y} ({sub['metric'].iloc[0]})" if "metric" in sub and len(sub) else y)
    axes[0][-1].legend([handles[lab] for lab in labels if lab in handles], [lab for lab in labels if lab in handles],
                       loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    return fig


def plot_benchmark(table, tasks: Sequence[str], models: Sequence[str] | None = None):
    """One panel per task: each method's paper metric with its bootstrap interval
    (table from tables.benchmark_table)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(tasks), figsize=(2.8 * len(tasks) + 1.5, 0.35 * len(table) + 1.4),
                             squeeze=False, sharey=True)
    y = np.arange(len(table))
    for ax, task in zip(axes[0], tasks):
        v = table[task].astype(float).to_numpy()
        lo = table[f"{task} lo"].astype(float).to_numpy()
        hi = table[f"{task} hi"].astype(float).to_numpy()
        cols = [color(str(m), models) for m in table.index]
        ax.barh(y, np.nan_to_num(v), color=cols, height=0.7)
        ok = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(v)
        ax.errorbar(v[ok], y[ok], xerr=[v[ok] - lo[ok], hi[ok] - v[ok]], fmt="none", ecolor="k", capsize=2, lw=0.8)
        ax.set_title(task)
        ax.set_xlim(left=0)
        ax.set_xlabel("paper metric")
        ax.grid(axis="y", visible=False)
    axes[0][0].set_yticks(y, [str(m) for m in table.index])
    axes[0][0].invert_yaxis()
    fig.tight_layout()
    return fig


def plot_method_ratios(panels: dict, target: float | None = 1.5):
    """One panel per setting ({title: [(method, ratio, seconds per question)]}): each method's time
    as a multiple of its members' summed greedy `generate` on the same batch; 1 = the members'
    own decoding, `target` a dashed line."""
    plt = _plt()
    n = max(len(rows) for rows in panels.values())
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 1.2, 0.35 * n + 1.6), squeeze=False)
    for ax, (title, rows) in zip(axes[0], panels.items()):
        y = np.arange(len(rows))
        ratios = [r for _, r, _ in rows]
        ax.barh(y, ratios, color=[color(m.split(" ")[0]) for m, _, _ in rows], height=0.7)
        for yi, (_, r, sec) in zip(y, rows):
            ax.text(r, yi, f" {sec:.2f} s/q", va="center", fontsize=7)
        ax.axvline(1.0, color="k", lw=0.8)
        if target is not None:
            ax.axvline(target, color="k", lw=0.8, ls="--")
        ax.set_yticks(y, [m for m, _, _ in rows])
        ax.invert_yaxis()
        ax.set_xlim(0, max(ratios + [target or 0]) * 1.35)
        ax.set_title(title)
        ax.set_xlabel("× summed generate (same kernels)")
        ax.grid(axis="y", visible=False)
    fig.tight_layout()
    return fig


def plot_engine_versions(rows: Sequence[tuple[str, float, float]], title: str | None = None,
                         baseline: str = "summed generate"):
    """AdaFuse's wall time per engine version ([(version, seconds, baseline seconds)]), with the
    members' summed greedy `generate` of the same run as a marker and the ratio over each bar."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(0.75 * len(rows) + 2.5, 3.6))
    x = np.arange(len(rows))
    ax.bar(x, [s for _, s, _ in rows], color=color("adafuse"), width=0.65, label="AdaFuse")
    ax.plot(x, [g for _, _, g in rows], "k_", ms=22, mew=2, label=baseline)
    for xi, (_, s, g) in zip(x, rows):
        ax.text(xi, s, f"{s / g:.1f}×", ha="center", va="bottom", fontsize=7)
    return _finish_bars(fig, ax, x, [v for v, _, _ in rows], "seconds", title or "AdaFuse at batch 64 by engine version",
                        "upper right", rotation=30, ha="right")


def plot_scaling(rows: Sequence[tuple[str, float, float]], title: str | None = None):
    """One GPU against several ([(check, one-GPU wall s, several-GPU wall s)]): wall time, with
    the throughput ratio over each pair."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.4 * len(rows) + 2.5, 3.4))
    x = np.arange(len(rows))
    ax.bar(x - 0.18, [a for _, a, _ in rows], width=0.36, color=_FALLBACK, label="1 GPU")
    ax.bar(x + 0.18, [b for _, _, b in rows], width=0.36, color=color("adafuse"), label="2 GPUs")
    for xi, (_, a, b) in zip(x, rows):
        ax.text(xi, max(a, b), f"{a / b:.2f}×", ha="center", va="bottom", fontsize=8)
    return _finish_bars(fig, ax, x, [c for c, _, _ in rows], "wall seconds",
                        title or "one run on one GPU and sharded over two", "upper left")


def _finish_bars(fig, ax, x, labels, ylabel: str, title: str, legend_loc: str, **tick_kw):
    """Labels, title and legend of a one-axis bar chart; no vertical grid lines."""
    ax.set_xticks(x, labels, **tick_kw)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc=legend_loc)
    ax.grid(axis="x", visible=False)
    fig.tight_layout()
    return fig
