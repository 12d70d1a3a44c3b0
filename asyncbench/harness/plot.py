"""`asyncbench plot`: PNGs of a run folder or a tune folder, for people who would rather look than read.

- A run folder (``result.json``): ``latency_cdf.png``, the CDF of the harness's own per-sample
  latency histogram with LoadGen's p50/p90/p99 and the latency target marked, and
  ``batch_sizes.png``, how many batches of each size the batcher formed.
- A tune folder (``trials.csv``, ``tuned.json``): ``tune_qps_p99.png``, every trial's p99
  against its target QPS (Server) or batch cap (MultiStream), coloured by validity, with the
  best trial starred; plus the run plots of the best trial, written into its own folder.

The PNGs go into the folder they describe. matplotlib is an optional extra: it is imported
only when a plot is drawn, so the rest of the package never needs it.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asyncbench.errors import UserError
from asyncbench.fileio import write_atomic

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure

RESULT_FILE = "result.json"  # as asyncbench.harness.result writes it
TRIALS_FILE = "trials.csv"  # as asyncbench.harness.tune writes them
TUNED_FILE = "tuned.json"
LATENCY_CDF_PNG = "latency_cdf.png"
BATCH_SIZES_PNG = "batch_sizes.png"
TUNE_PNG = "tune_qps_p99.png"
FIGSIZE_IN = (7.0, 4.5)
DPI = 110
_TRIAL_COLUMNS = ("trial", "validity", "target_qps", "max_batch_size", "max_queue_delay_us", "p99_ms")
# validity -> (colour, marker, legend name); anything else is drawn grey as "other"
_VALIDITY_STYLE = {"VALID": ("tab:green", "o", "VALID"), "INVALID": ("tab:red", "o", "INVALID"),
                   "FAILED": ("black", "x", "FAILED")}
_OTHER_STYLE = ("tab:gray", "s", "other")
_PERCENTILE_COLOURS = {"p50": "tab:green", "p90": "tab:orange", "p99": "tab:purple"}


def plot_path(path: Path) -> list[Path]:
    """Write the PNGs for a run folder or a tune folder into that folder; returns the files written."""
    folder = path.parent if path.is_file() and path.name in (RESULT_FILE, TRIALS_FILE) else path
    if not folder.is_dir():
        raise UserError(f"{path}: no such folder (give a run folder with {RESULT_FILE} or a tune folder with "
                        f"{TRIALS_FILE})")
    if (folder / TRIALS_FILE).is_file():
        return plot_tune(folder)
    if (folder / RESULT_FILE).is_file():
        return plot_run(folder)
    raise UserError(f"{folder} has neither {RESULT_FILE} (a run folder) nor {TRIALS_FILE} (a tune folder)")


# --- reading -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    """What the run plots need from result.json, checked once so drawing never meets a malformed value."""

    scenario: str
    title: str
    engine: str
    samples: int
    bins_per_decade: int | None
    bins: list[tuple[float, float | None, float]]  # (low ns, high ns or None for the overflow bin, samples)
    loadgen_ns: dict[str, float]  # "p50", "p90", "p99" where LoadGen logged them
    target_ns: float | None
    batch_sizes: dict[int, int]


@dataclass(frozen=True)
class _Trial:
    """One trials.csv row, as numbers (None for an empty cell)."""

    number: int
    validity: str
    target_qps: float | None
    max_batch_size: int | None
    max_queue_delay_us: int | None
    p99_ms: float | None
    log_dir: str


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file, or a one-line UserError saying why it cannot be used."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"cannot read {path}: {_one_line(e)}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON object")
    return data


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _load_run(folder: Path) -> _Run:
    """result.json as `_Run`; a missing or malformed required field is a UserError."""
    path = folder / RESULT_FILE
    result = _read_json(path)
    try:
        scenario = str(result["config"]["scenario"])
        validity = result["result"]["validity"] or "no result"
        engine = str(result["engine"]["name"])
        histogram = result.get("harness_latency") or {}
        bins = sorted((float(low), None if high is None else float(high), float(count))
                      for low, high, count in histogram.get("bins") or [])
        latency = result.get("latency_ns") or {}
        loadgen_ns = {key: float(latency[key]) for key in _PERCENTILE_COLOURS if latency.get(key) is not None}
        target = (result.get("loadgen_effective") or {}).get("target_latency_ns")
        batch_sizes = {int(size): int(n) for size, n in (result.get("batch_sizes") or {}).items()
                       if int(size) > 0 and int(n) > 0}
        samples = int(histogram.get("samples") or round(sum(count for *_, count in bins)))
        per_decade = histogram.get("bins_per_decade")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{path} is not a usable asyncbench result.json ({type(e).__name__}: {_one_line(e)})") from None
    # Offline has no latency bound; LoadGen logs its default target anyway, which would only mislead.
    target_ns = float(target) if target is not None and scenario != "Offline" else None
    return _Run(scenario=scenario, title=f"{scenario} {validity} — {engine}", engine=engine, samples=samples,
                bins_per_decade=int(per_decade) if per_decade else None, bins=bins, loadgen_ns=loadgen_ns,
                target_ns=target_ns, batch_sizes=batch_sizes)


def _number(row: dict[str, str], key: str, where: str) -> float | None:
    text = (row.get(key) or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{where}: {key} {text!r} is not a number") from None
    if not math.isfinite(value):
        return None
    return value


def _integer(value: float | None) -> int | None:
    return None if value is None else round(value)


def _load_trials(path: Path) -> list[_Trial]:
    """trials.csv as `_Trial` rows; a missing column, a bad number or no trials at all is a UserError."""
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in _TRIAL_COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                raise UserError(f"{path} is not an asyncbench trials.csv (no column {', '.join(missing)})")
            trials = []
            for row in reader:
                where = f"{path} line {reader.line_num}"
                number = _number(row, "trial", where)
                if number is None:
                    raise UserError(f"{where}: no trial number")
                trials.append(_Trial(
                    number=round(number), validity=(row.get("validity") or "").strip(),
                    target_qps=_number(row, "target_qps", where),
                    max_batch_size=_integer(_number(row, "max_batch_size", where)),
                    max_queue_delay_us=_integer(_number(row, "max_queue_delay_us", where)),
                    p99_ms=_number(row, "p99_ms", where), log_dir=(row.get("log_dir") or "").strip()))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read {path}: {_one_line(e)}") from None
    if not trials:
        raise UserError(f"{path} has no trials yet")
    return trials


# --- drawing helpers -----------------------------------------------------------------------------------------------


def _new_figure() -> tuple[Figure, Axes]:
    """A figure of the common size, on the Agg backend; UserError where matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install '.[plot]'") from None
    matplotlib.use("Agg")  # files only: never a window, and works without a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=FIGSIZE_IN, dpi=DPI)
    ax.grid(True, which="major", alpha=0.35)
    return fig, ax


def _save(fig: Figure, path: Path) -> Path:
    """The figure as a PNG, replaced atomically (a reader never sees half a file); the figure is closed."""
    import matplotlib.pyplot as plt

    try:
        fig.tight_layout()
        write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    finally:
        plt.close(fig)
    return path


def _plain(value: float) -> str:
    """A tick label without exponents: 0.05, 2, 1000, 20000."""
    return f"{value:,.10g}" if value < 1e7 else f"{value:.3g}"


def _log_axis(axis: Axis, lo: float, hi: float) -> None:
    """Plain-number labels on a log10 axis; over a narrow span the 2x and 5x ticks are labelled too."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10))
    axis.set_major_formatter(FuncFormatter(lambda v, _: _plain(v)))
    axis.set_minor_locator(LogLocator(base=10, subs=(2, 3, 4, 5, 6, 7, 8, 9)))
    if hi / lo <= 300:  # under ~2.5 decades there is room for 2x and 5x labels
        def minor(v: float, _: object) -> str:
            lead = round(v / 10 ** math.floor(math.log10(v) + 1e-9))
            return _plain(v) if lead in (2, 5) else ""

        axis.set_minor_formatter(FuncFormatter(minor))
    else:
        axis.set_minor_formatter(NullFormatter())


def _ms(value: float) -> str:
    """Milliseconds with 3 significant figures, never in exponent form."""
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:#.3g}"  # 0.800, 0.0123: the trailing zeros keep 3 figures


def _qps(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:g}"


# --- run plots -----------------------------------------------------------------------------------------------------


def plot_run(folder: Path) -> list[Path]:
    """The run plots of one run folder (a plot with nothing to show is skipped, not drawn empty)."""
    run = _load_run(folder)
    written = [_latency_cdf(run, folder / LATENCY_CDF_PNG), _batch_sizes(run, folder / BATCH_SIZES_PNG)]
    return [p for p in written if p is not None]


def _latency_cdf(run: _Run, out: Path) -> Path | None:
    """Cumulative fraction of samples at each bin's high edge, log x in ms, LoadGen's percentiles marked."""
    total = sum(count for *_, count in run.bins)
    if total <= 0:
        return None
    xs: list[float] = []
    ys: list[float] = []
    if run.bins[0][0] > 0:  # the curve starts at 0 at the first occupied bin's low edge
        xs.append(run.bins[0][0] / 1e6)
        ys.append(0.0)
    seen = overflow = 0.0
    for _low, high, count in run.bins:
        seen += count
        if high is None:
            overflow += count
            continue
        xs.append(high / 1e6)
        ys.append(seen / total)
    if not xs:  # only the overflow bin: show where it starts
        xs, ys = [run.bins[0][0] / 1e6], [0.0]

    fig, ax = _new_figure()
    ax.plot(xs, ys, color="tab:blue", linewidth=1.8, marker="o" if len(xs) == 1 else None,
            label="harness, per sample")
    per = " per query" if run.scenario == "MultiStream" else ""
    marks = [(f"LoadGen {key}{per} {_ms(ns / 1e6)} ms", ns / 1e6, _PERCENTILE_COLOURS[key], ":")
             for key, ns in run.loadgen_ns.items()]
    if run.target_ns:
        name = "latency target" if run.scenario == "Server" else "target_latency setting"
        marks.append((f"{name} {_ms(run.target_ns / 1e6)} ms", run.target_ns / 1e6, "tab:red", "--"))
    for label, x, colour, style in marks:
        ax.axvline(x, color=colour, linestyle=style, linewidth=1.5, label=label)

    every_x = xs + [x for _, x, _, _ in marks]
    lo, hi = min(every_x), max(every_x)
    ax.set_xscale("log")
    ax.set_xlim(lo / 1.25, hi * 1.25)
    _log_axis(ax.xaxis, lo / 1.25, hi * 1.25)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("fraction of samples ≤ latency")
    ax.set_title(run.title)
    note = f"{run.samples:,} samples"
    if run.bins_per_decade:
        note += f", {run.bins_per_decade} bins/decade"
    if overflow:
        note += f"\n{overflow:,.0f} samples above {_ms(run.bins[-1][0] / 1e6)} ms not shown"
    ax.text(0.02, 0.97, note, transform=ax.transAxes, va="top", ha="left", fontsize=9,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"})
    ax.legend(loc="lower right", fontsize=8.5, framealpha=0.9)
    return _save(fig, out)


def _batch_sizes(run: _Run, out: Path) -> Path | None:
    """Batches per batch size; a log2 x axis where the sizes span more than 16x."""
    if not run.batch_sizes:
        return None
    sizes = sorted(run.batch_sizes)
    counts = [run.batch_sizes[s] for s in sizes]
    log_x = sizes[-1] / sizes[0] > 16
    fig, ax = _new_figure()
    if log_x:
        # Bars of equal width in log2 units, narrowed where neighbouring sizes are close.
        logs = [math.log2(s) for s in sizes]
        lefts, widths = [], []
        for i, x in enumerate(logs):
            gaps = [logs[i] - logs[i - 1]] if i > 0 else []
            gaps += [logs[i + 1] - logs[i]] if i + 1 < len(logs) else []
            half = min([0.3, *(0.42 * g for g in gaps)])
            lefts.append(2 ** (x - half))
            widths.append(2 ** (x + half) - 2 ** (x - half))
        ax.bar(lefts, counts, width=widths, align="edge", color="tab:blue", edgecolor="tab:blue")
        ax.set_xscale("log", base=2)
        ax.set_xlim(2 ** (logs[0] - 0.6), 2 ** (logs[-1] + 0.6))
        ax.set_xlabel("batch size (samples, log2 scale)")
    else:
        ax.bar(sizes, counts, width=0.8, color="tab:blue")
        ax.set_xlim(sizes[0] - 0.8, sizes[-1] + 0.8)
        ax.set_xlabel("batch size (samples)")
    _batch_ticks(ax, sizes, log_x)

    from matplotlib.ticker import FuncFormatter

    log_y = max(counts) / min(counts) > 200  # a few batches beside 100k would be invisible on a linear axis
    if log_y:
        ax.set_yscale("log")
        ax.set_ylim(0.5, max(counts) * 3)
        ax.set_ylabel("batches (log scale)")
    else:
        ax.set_ylim(0, max(counts) * 1.1)
        ax.set_ylabel("batches")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _plain(v)))
    if len(sizes) <= 16:
        for size, n in zip(sizes, counts, strict=True):
            ax.annotate(f"{n:,}", (size, n), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                        fontsize=8)
    batches = sum(counts)
    samples = sum(s * n for s, n in run.batch_sizes.items())
    # The totals go in the title: any corner of the axes may hold a tall bar.
    ax.set_title(f"{run.scenario} batch sizes — {run.engine}\n"
                 f"{samples:,} samples in {batches:,} batches, mean batch {samples / batches:.1f}", fontsize=11)
    return _save(fig, out)


def _batch_ticks(ax: Axes, sizes: Sequence[int], log_x: bool) -> None:
    """Integer ticks: every size where there are few, else powers of two (log) or matplotlib's choice."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator

    if len(sizes) <= 12:
        ax.set_xticks(list(sizes))
    elif log_x:
        ax.set_xticks([2 ** k for k in range(math.floor(math.log2(sizes[0])), math.ceil(math.log2(sizes[-1])) + 1)])
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=12, integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0f}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.grid(False, axis="x")


# --- tune plot -----------------------------------------------------------------------------------------------------


def plot_tune(folder: Path) -> list[Path]:
    """The tuning plot of a tune folder, and the run plots of its best trial where tuned.json names one."""
    trials = _load_trials(folder / TRIALS_FILE)
    tuned = _read_json(folder / TUNED_FILE) if (folder / TUNED_FILE).is_file() else {}
    best = tuned.get("best") if isinstance(tuned.get("best"), dict) else None
    target = tuned.get("target_latency_ms")
    target_ms = float(target) if isinstance(target, int | float) and not isinstance(target, bool) else None
    best_trial = None
    if best is not None and best.get("trial") is not None:
        best_trial = next((t for t in trials if t.number == best.get("trial")), None)
    engine = tuned.get("engine")
    title = f"{len(trials)} trials" + (f" — {engine}" if isinstance(engine, str) and engine else "")
    written = [_tune_plot(trials, best_trial, target_ms, title, folder / TUNE_PNG)]
    if best is not None and best.get("log_dir"):
        run_folder = _best_folder(folder, str(best["log_dir"]), best_trial)
        if run_folder is not None:
            written += plot_run(run_folder)
    return written


def _best_folder(tune_dir: Path, log_dir: str, best: _Trial | None) -> Path | None:
    """The best trial's run folder: inside this tune folder first (it may have been moved), then as recorded."""
    names = [Path(log_dir)] + ([Path(best.log_dir)] if best is not None and best.log_dir else [])
    candidates = [tune_dir / "trials" / p.name for p in names] + names
    if best is not None:
        candidates += sorted((tune_dir / "trials").glob(f"{best.number:03d}_*"))
    return next((c for c in candidates if (c / RESULT_FILE).is_file()), None)


def _tune_plot(trials: Sequence[_Trial], best: _Trial | None, target_ms: float | None, title: str,
               out: Path) -> Path:
    """p99 per trial against target QPS (Server) or batch cap (MultiStream, where no trial has a rate)."""
    server = any(t.target_qps is not None for t in trials)
    x_of: Callable[[_Trial], float | None]
    labels: list[str] = []
    if server:
        def x_of(t: _Trial) -> float | None:
            return t.target_qps
    else:
        x_of, labels = _categories(trials)

    fig, ax = _new_figure()
    groups: dict[tuple[str, str, str], list[_Trial]] = {}
    for t in trials:
        groups.setdefault(_VALIDITY_STYLE.get(t.validity, _OTHER_STYLE), []).append(t)
    ys: list[float] = []
    xs: list[float] = []
    for (colour, marker, name), members in sorted(groups.items(), key=lambda kv: _group_order(kv[0][2])):
        shown = [(x, t.p99_ms) for t in members if (x := x_of(t)) is not None and t.p99_ms is not None and t.p99_ms > 0]
        hidden = len(members) - len(shown)
        label = f"{name} ({len(members)}" + (f", {hidden} without p99)" if hidden else ")")
        ax.scatter([x for x, _ in shown], [y for _, y in shown], c=colour, marker=marker, s=36, label=label, zorder=3,
                   linewidths=1.5 if marker == "x" else 0.5, edgecolors=None if marker == "x" else "white")
        xs += [x for x, _ in shown]
        ys += [y for _, y in shown]
    if target_ms:
        ax.axhline(target_ms, color="tab:red", linestyle="--", linewidth=1.3, label=f"p99 target {_ms(target_ms)} ms")
        ys.append(target_ms)
    if best is not None and best.p99_ms and (bx := x_of(best)) is not None:
        ax.scatter([bx], [best.p99_ms], marker="*", s=380, c="gold", edgecolors="black", linewidths=0.8, zorder=4,
                   label=f"best (trial {best.number})")
        if server and best.target_qps is not None:
            text = f"best: {_qps(best.target_qps)} QPS"
        else:
            text = f"best: max batch {best.max_batch_size}, p99 {_ms(best.p99_ms)} ms"
        ax.annotate(text, (bx, best.p99_ms), xytext=(-12, 14), textcoords="offset points", ha="right",
                    fontsize=9, fontweight="bold", arrowprops={"arrowstyle": "-", "color": "0.3"})

    scenario = "Server" if server else "MultiStream"
    if ys:
        lo, hi = min(ys), max(ys)
        use_log_y = server or hi / lo > 10
        if use_log_y:
            ax.set_yscale("log")
            ax.set_ylim(lo / 1.6, hi * 1.6)
            _log_axis(ax.yaxis, lo / 1.6, hi * 1.6)
        else:
            ax.set_ylim(0, hi * 1.2)
    else:
        use_log_y = False
    what = "p99 latency" if server else "p99 per-query latency"
    ax.set_ylabel(what + (" (ms, log scale)" if use_log_y else " (ms)"))
    if server:
        rates = [x for x in xs if x > 0] or [t.target_qps for t in trials if t.target_qps]
        if rates and max(rates) / min(rates) > 16:
            ax.set_xscale("log")
            _log_axis(ax.xaxis, min(rates), max(rates))
            ax.set_xlabel("target QPS (queries/s, log scale)")
        else:
            from matplotlib.ticker import FuncFormatter

            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
            ax.set_xlabel("target QPS (queries/s)")
    else:
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlim(-0.6, len(labels) - 0.4)
        ax.set_xlabel("max batch size" + (" / max queue delay" if any("\n" in label for label in labels) else ""))
        ax.grid(False, axis="x")
    ax.set_title(f"{scenario} tuning, {title}")
    ax.legend(loc="best", fontsize=8.5, framealpha=0.9)
    return _save(fig, out)


def _group_order(name: str) -> int:
    return ("VALID", "INVALID", "FAILED").index(name) if name in ("VALID", "INVALID", "FAILED") else 3


def _categories(trials: Sequence[_Trial]) -> tuple[Callable[[_Trial], float | None], list[str]]:
    """MultiStream x positions and their labels: one per batch cap, or per (cap, delay) where the delays differ."""
    by_delay = len({t.max_queue_delay_us for t in trials}) > 1

    def key(t: _Trial) -> tuple[int | None, int | None]:
        return t.max_batch_size, t.max_queue_delay_us if by_delay else None

    keys = sorted({key(t) for t in trials}, key=lambda k: (k[0] is None, k[0] or 0, k[1] is None, k[1] or 0))
    labels = []
    for cap, delay in keys:
        label = "preset" if cap is None else str(cap)
        if by_delay:
            label += "\n" + ("preset" if delay is None else f"{delay} us")
        labels.append(label)
    position = {k: float(i) for i, k in enumerate(keys)}
    return lambda t: position[key(t)], labels
