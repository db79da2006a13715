"""`python -m rlhf.compare DIR [DIR...] [--out DIR]` (compare/__main__.py): one table and two plots that set
runs side by side.

A DIR is a multirun directory (outputs/multirun/<date>/<time>: every job in it) or one run's directory.
The swept values are the overrides that differ between the runs (.hydra/overrides.yaml); where those
agree, the keys of the resolved config that differ. A job without summary.json (crashed, stopped or still
running) is a row marked failed, as is a job of the sweep that left no directory at all.

The table is printed and written to compare.md, with compare-curves.png (loss and reward against the step,
one line per run) and compare-eval.png (each eval metric after training against each swept value) beside it:
in the multirun directory, else in the first DIR's parent, or in --out DIR. Re-running rewrites those files;
any other file of those names stops it.

It reads the run directories only: no torch, no network, about a second.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlhf import methods
from rlhf.errors import UserError

# in compare.md's first line and in each plot's PNG metadata: marks a file that compare may rewrite
MARK = "rlhf.compare"
FIX_DIRS = "fix: pass a multirun directory (outputs/multirun/<date>/<time>) or run directories"


@dataclass
class Run:
    name: str  # the job directory's name
    path: Path | None  # None: a job of the sweep that left no directory
    overrides: list[str]  # as on the command line: method.lora_r=4
    config: dict[str, Any]  # .hydra/config.yaml
    summary: dict[str, Any] | None  # None: the run did not finish
    metrics: list[dict[str, Any]]
    eval: dict[str, Any] | None  # eval.json; None with eval=none
    swept: dict[str, str] = field(default_factory=dict)  # swept key -> this run's value

    @property
    def failed(self) -> bool:
        return self.summary is None

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.swept.items()) or self.name


# --------------------------------------------------------------------------- reading runs


def collect(dirs: Sequence[str | Path]) -> list[Run]:
    """Every run under `dirs`, in order, each with its swept values filled in."""
    runs = [run for d in dirs for run in find_runs(Path(d))]
    keys = swept_keys(runs)
    for run in runs:
        run.swept = {key: value(run, key) for key in keys}
    return runs


def find_runs(path: Path) -> list[Run]:
    if not path.is_dir():
        raise UserError(f"{path}: no such directory; {FIX_DIRS}")
    if (path / ".hydra").is_dir():
        return [load_run(path)]
    jobs = sorted((p for p in path.iterdir() if (p / ".hydra").is_dir()), key=job_order)
    runs = [load_run(p) for p in jobs]
    plan = planned_jobs(path)
    found = {tuple(run.overrides) for run in runs}
    runs += [
        Run(f"job {num} (no directory)", None, list(job), {}, None, [], None)
        for num, job in enumerate(plan)
        if job not in found
    ]
    if plan:  # in the sweep's order: a job that left no directory sits where it would have run
        order = {job: num for num, job in enumerate(plan)}
        runs.sort(key=lambda run: order.get(tuple(run.overrides), len(plan)))
    if not runs:
        raise UserError(f"{path}: holds no run (no .hydra/ in it or in its subdirectories); {FIX_DIRS}")
    return runs


def job_order(path: Path) -> tuple[int, str]:
    """Hydra numbers a sweep's jobs 0_, 1_, ... 10_: sort by that number, not as text."""
    num = path.name.split("_", 1)[0]
    return (int(num) if num.isdigit() else sys.maxsize, path.name)


def load_run(path: Path) -> Run:
    overrides = read_yaml(path / ".hydra" / "overrides.yaml") or []
    summary = path / "summary.json"
    eval_json = path / "eval.json"
    return Run(
        name=path.name,
        path=path,
        overrides=[str(o) for o in overrides],
        config=read_yaml(path / ".hydra" / "config.yaml") or {},
        summary=read_json(summary) if summary.is_file() else None,
        metrics=read_jsonl(path / "metrics.jsonl"),
        eval=read_json(eval_json) if eval_json.is_file() else None,
    )


def planned_jobs(sweep_dir: Path) -> list[tuple[str, ...]]:
    """Each job's overrides, in job order, as multirun.yaml planned them; [] where that is unknown.

    A job can leave no directory (bad input removes it and stops the sweep): the plan still lists it. It is
    recomputed as Hydra's basic sweeper makes it: the sweeper's params plus the command line's overrides.
    """
    hydra_cfg = (read_yaml(sweep_dir / "multirun.yaml") or {}).get("hydra", {})
    if not str(hydra_cfg.get("sweeper", {}).get("_target_", "")).endswith("BasicSweeper"):
        return []  # another sweeper plans its jobs as it goes: nothing to recompute
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{k}={v}" for k, v in (hydra_cfg["sweeper"].get("params") or {}).items()]
    overrides = OverridesParser.create().parse_overrides(params + hydra_cfg["overrides"]["task"])
    return [tuple(job) for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]}); fix: repair or remove it") from e


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg}); fix: repair or remove it") from e


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for num, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{num}: not valid JSON ({e.msg}); fix: repair or remove the line") from e
    return rows


# --------------------------------------------------------------------------- swept values


def parse_overrides(overrides: list[str]) -> dict[str, str]:
    """method.lora_r=4 -> {method.lora_r: 4}; Hydra's +key=, ++key= and ~key name the same key."""
    parsed = {}
    for override in overrides:
        key, _, val = override.partition("=")
        parsed[key.lstrip("+~")] = val if "=" in override else "(deleted)"
    return parsed


def value(run: Run, key: str) -> str:
    """The run's value for `key`: its override, else its resolved config (a group by its option's name)."""
    given = parse_overrides(run.overrides)
    if key in given:
        return given[key]
    node: Any = run.config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return "-"
        node = node[part]
    return str(node["name"] if isinstance(node, dict) and "name" in node else node)


def swept_keys(runs: list[Run]) -> list[str]:
    """Override keys whose values differ between the runs; if none do, the config keys that differ."""
    keys = list(dict.fromkeys(k for run in runs for k in parse_overrides(run.overrides)))
    differ = [k for k in keys if len({value(run, k) for run in runs}) > 1]
    if differ or len(runs) < 2:
        return differ
    # runs of one command line (e.g. a YAML edited between them): the resolved config tells them apart
    with_config = [run for run in runs if run.config]
    keys = list(dict.fromkeys(k for run in with_config for k in config_keys(run.config)))
    return [k for k in keys if len({value(run, k) for run in with_config}) > 1]


def config_keys(node: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k, v in node.items():
        keys += config_keys(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"{prefix}{k}"]
    return keys


# --------------------------------------------------------------------------- the table


def fmt(val: Any, sign: bool = False) -> str:
    if val is None:
        return "-"
    if isinstance(val, bool) or not isinstance(val, (int, float)):
        return str(val)
    if sign:
        return f"{val:+.4g}"
    return f"{val:,}" if isinstance(val, int) else f"{val:.4g}"  # parameter counts: 32,768


def eval_metrics(runs: list[Run]) -> list[str]:
    return list(dict.fromkeys(m for run in runs if run.eval for m in run.eval.get("after", {})))


def table(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of strings: swept values first, then results, eval, cost and the run's name."""
    done = [run.summary for run in runs if run.summary]
    results = [k for k in methods.result_keys() if any(s.get(k) is not None for s in done)]
    gpu = any(s.get("peak_gpu_mb") is not None for s in done)
    metrics = eval_metrics(runs)
    header = [*runs[0].swept, "train loss", *[k.replace("_", " ") for k in results]]
    header += [*metrics, "wall s", "tokens/s", "peak RSS MB", *(["peak GPU MB"] if gpu else [])]
    header += ["trainable params", "run"]
    rows = []
    for run in runs:
        cells = list(run.swept.values())
        s = run.summary
        if s is None:
            cells += ["failed"] + ["-"] * (len(header) - len(cells) - 2) + [run.name]
            rows.append(cells)
            continue
        after, delta = (run.eval or {}).get("after", {}), (run.eval or {}).get("delta", {})
        cells += [fmt(s.get("loss_end_mean")), *[fmt(s.get(k)) for k in results]]
        for m in metrics:
            cells.append(fmt(after.get(m)) + (f" ({fmt(delta[m], sign=True)})" if m in delta else ""))
        cells += [fmt(s.get("wall_time_s")), fmt(s.get("tokens_per_s")), fmt(s.get("peak_rss_mb"))]
        cells += [fmt(s.get("peak_gpu_mb"))] if gpu else []
        share = f" ({s['trainable_share']:.2%})" if s.get("trainable_share") is not None else ""
        cells += [fmt(s.get("trainable_params")) + share, run.name]
        rows.append(cells)
    return header, rows


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)])


# --------------------------------------------------------------------------- the report


def write_report(runs: list[Run], out: Path, sources: Sequence[str | Path]) -> list[Path]:
    """compare.md and the plots in `out`; returns the files written. Refuses to replace a file it did not write."""
    md, curves, evals = out / "compare.md", out / "compare-curves.png", out / "compare-eval.png"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; fix: pass a directory")
    for path in (md, curves, evals):
        if path.exists() and MARK.encode() not in path.read_bytes()[:4096]:
            raise UserError(
                f"{path}: exists and was not written by rlhf.compare; fix: move it or pass --out DIR"
            )
    out.mkdir(parents=True, exist_ok=True)
    plots = [p for p in (plot_curves(runs, curves), plot_eval(runs, evals)) if p]
    for stale in {curves, evals} - set(plots):
        stale.unlink(missing_ok=True)  # ours, from an earlier comparison (with eval.json, say): now wrong

    failed = ", ".join(run.name for run in runs if run.failed) or "none"
    swept = ", ".join(runs[0].swept) or "nothing (no override or config key differs)"
    eval_note = " Eval cells: the score after training (its change from the base model)."
    lines = [
        f"<!-- written by `python -m {MARK}`; running it again rewrites this file -->",
        f"# Comparison of {len(runs)} runs",
        "",
        "Compared: " + ", ".join(f"`{s}`" for s in sources) + f". Swept: {swept}.",
        f"Failed (no summary.json: crashed, stopped or still running): {failed}.",
        "",
        "train loss: mean of the last tenth of the logged losses (summary.json `loss_end_mean`)."
        + (eval_note if eval_metrics(runs) else ""),
        "",
        markdown_table(*table(runs)),
        "",
        *[f"![{p.stem}]({p.name})" for p in plots],
    ]
    md.write_text("\n".join(lines) + "\n")
    return [md, *plots]


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": MARK})
    pyplot().close(fig)
    return path


def plot_curves(runs: list[Run], path: Path) -> Path | None:
    """Loss (and reward, where runs log it) against the step, one line per run."""
    import numpy as np

    series = [k for k in ("loss", "reward") if any(k in r for run in runs for r in run.metrics)]
    if not series:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(series), figsize=(5.5 * len(series), 3.8), squeeze=False)
    for ax, key in zip(axes.flat, series, strict=True):
        smoothed = False
        for num, run in enumerate(runs):
            points = [(r["step"], r[key]) for r in run.metrics if key in r]
            if not points:
                continue
            steps, values = (np.array(v, dtype=float) for v in zip(*points, strict=True))
            long = len(values) >= 20
            if long:  # per-step values are noisy: a trailing mean over a tenth of the run
                window = len(values) // 10
                steps, values = steps[window - 1 :], np.convolve(values, np.ones(window) / window, "valid")
            smoothed |= long
            ax.plot(
                steps,
                values,
                "--" if run.failed else "-",
                color=f"C{num % 10}",  # a run keeps its colour in every panel
                marker=None if long else ".",
                label=run.label + (" (failed)" if run.failed else ""),
            )
        ax.set_xlabel("step")
        ax.set_title(key + (" (20+ steps: running mean over a tenth)" if smoothed else ""), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("training curves")
    return save(fig, path)


def plot_eval(runs: list[Run], path: Path) -> Path | None:
    """Each eval metric after training (rows) against each swept value (columns), a point per run."""
    done = [run for run in runs if run.eval and not run.failed]
    metrics = eval_metrics(done)
    if not metrics:
        return None
    keys = list(done[0].swept) or ["run"]
    plt = pyplot()
    fig, axes = plt.subplots(
        len(metrics), len(keys), figsize=(4.5 * len(keys), 3.2 * len(metrics)), squeeze=False
    )
    for row, metric in enumerate(metrics):
        for col, key in enumerate(keys):
            ax = axes[row][col]
            after = [(run.swept.get(key, run.name), run.eval["after"].get(metric)) for run in done]
            points = [(x, y) for x, y in after if isinstance(y, (int, float))]
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            if all(is_number(x) for x in xs):
                ax.plot([float(x) for x in xs], ys, "o")
            else:  # categorical (a method, a model): one tick per value, in the order the runs came
                cats = list(dict.fromkeys(xs))
                ax.plot([cats.index(x) for x in xs], ys, "o")
                ax.set_xticks(range(len(cats)), cats, rotation=20, fontsize=8)
                ax.set_xlim(-0.5, len(cats) - 0.5)
            before = {run.eval.get("before", {}).get(metric) for run in done} - {None}
            if len(before) == 1:  # one base model: its score is the bar to beat
                ax.axhline(before.pop(), color="grey", linestyle="--", label="before training")
                ax.legend(fontsize=7)
            ax.set_xlabel(key)
            ax.set_ylabel(metric, fontsize=8)
            ax.grid(alpha=0.3)
    fig.suptitle("eval after training")
    return save(fig, path)


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
