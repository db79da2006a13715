"""The evaluation stage: lm-eval on the model in memory, before and after training.

Also `python -m rlhf.evaluate run=<run dir> [eval=... eval.limit=...]`: evaluate a finished run again.

Results are flat `{"<task>/<metric>": value}` dicts. The base model's results are cached on disk per
(model, precision, tasks and their files, limit, few-shot, chat template, library versions), and so are
its greedy sample generations, so a sweep and every later run on the same base computes them once.
`python -m rlhf.models` (make setup) computes both for the default run ahead of it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlhf.errors import UserError

TASKS = Path(__file__).resolve().parent / "tasks"  # the eval=quick tasks: lm-eval YAMLs, data, checkers


def task_manager(cfg: DictConfig):
    # lm-eval's own registry is indexed only when a task outside ours is asked for (17 s on a 2-core CPU)
    return _task_manager(include_defaults=not all(t.startswith("rlhf_") for t in cfg.tasks))


@functools.cache
def _task_manager(include_defaults: bool):
    """One index per process: the check, the base model's eval and the tuned model's eval share it."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS), include_defaults=include_defaults)


def check(cfg: DictConfig) -> None:
    """Before any weights load: every task exists, and its data can be had (offline: from a local cache)."""
    if not cfg.tasks:
        return
    manager = task_manager(cfg)
    unknown = [t for t in cfg.tasks if t not in manager.all_tasks]
    if unknown:
        raise UserError(
            f"eval.tasks={list(cfg.tasks)}: unknown task {unknown[0]}; fix: use tasks of lm-eval's registry "
            f"(lm_eval ls tasks) or ours: {', '.join(t for t in manager.all_tasks if t.startswith('rlhf_'))}"
        )
    for task in cfg.tasks:
        for path in sorted(_hub_datasets(manager, task)):
            _check_dataset(task, path)


def _hub_datasets(manager, name: str) -> set[str]:
    """The hub data sets a task, group or tag reads, from the task YAMLs alone: nothing downloads."""
    entry = manager.task_index.get(name)
    if entry is None:
        return set()
    if entry.kind.name == "TAG":
        return {path for child in entry.tags for path in _hub_datasets(manager, child)}
    config = entry.cfg or {}
    if entry.kind.name == "GROUP":
        children = [c if isinstance(c, str) else c.get("task", "") for c in config.get("task", [])]
        return {path for child in children for path in _hub_datasets(manager, child)}
    path = config.get("dataset_path")
    return {path} if path and "custom_dataset" not in config and not Path(path).exists() else set()


def _check_dataset(task: str, path: str) -> None:
    from huggingface_hub import scan_cache_dir

    from rlhf.models import hub_host, hub_reachable

    try:
        cached = any(r.repo_id == path and r.repo_type == "dataset" for r in scan_cache_dir().repos)
    except Exception:  # no cache directory yet
        cached = False
    if not cached and (os.environ.get("HF_DATASETS_OFFLINE") == "1" or not hub_reachable()):
        raise UserError(
            f"eval.tasks: {task} needs the data set {path}, which is not in the local Hugging Face cache, and "
            f"{hub_host()} cannot be reached (offline); fix: run once with network access, or use eval=quick "
            "(offline tasks) or eval=none"
        )


def evaluate(cfg: DictConfig, model, tokenizer, precision: str) -> dict[str, dict[str, float]]:
    """lm-eval on a model object (adapters included: nothing is reloaded from disk).

    Returns {"scores": {"task/metric": x}, "stderr": {"task/metric": s}}.
    """
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    was_training = model.training  # HFLM switches the model to eval mode; training resumes afterwards
    lm = HFLM(
        pretrained=model,
        tokenizer=tokenizer,
        batch_size=cfg.batch_size,
        # the weights stay as they are; the forward pass runs in the precision training used
        mixed_precision_dtype={"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision),
    )
    with lora_merged(model):
        results = simple_evaluate(
            model=lm,
            tasks=list(cfg.tasks),
            num_fewshot=cfg.num_fewshot,
            limit=cfg.limit,
            apply_chat_template=cfg.apply_chat_template,
            task_manager=task_manager(cfg),
            log_samples=False,
            bootstrap_iters=1000,  # only metrics without a closed-form stderr are bootstrapped
        )
    model.train(was_training)
    return {"scores": flatten(results["results"]), "stderr": flatten(results["results"], stderr=True)}


@contextlib.contextmanager
def lora_merged(model) -> Iterator[None]:
    """A LoRA adapter folded into the weights while lm-eval runs, and taken out again afterwards.

    The same function without the adapter's extra matmuls per layer (the tuned model's eval took 1.2x the
    base model's time unmerged). Not on quantized weights, where merging would round; not for prompt tuning.
    """
    from peft import LoraConfig, PeftModel

    mergeable = (
        isinstance(model, PeftModel)
        and all(isinstance(c, LoraConfig) for c in model.peft_config.values())
        and all(p.is_floating_point() for p in model.parameters())
    )
    if mergeable:
        model.merge_adapter()
    try:
        yield
    finally:
        if mergeable:
            model.unmerge_adapter()


def flatten(results: dict[str, dict[str, Any]], stderr: bool = False) -> dict[str, float]:
    """lm-eval's {"task": {"acc,none": x, "acc_stderr,none": s, ...}} -> {"task/acc": x} (or s)."""
    flat = {}
    for task, metrics in sorted(results.items()):
        for key, value in metrics.items():
            name, _, filter_name = key.partition(",")
            if name.endswith("_stderr") != stderr or not isinstance(value, (int, float)):
                continue
            name = name.removesuffix("_stderr")
            if name in ("alias", "sample_len", "sample_count"):
                continue
            flat[f"{task}/{name}" + ("" if filter_name in ("", "none") else f"_{filter_name}")] = float(value)
    return flat


def base_cache_key(cfg: DictConfig, model_cfg: DictConfig, hw: DictConfig, model_dir: str) -> str:
    """Everything that can change the base model's scores, the model's files included."""
    from importlib.metadata import version

    tasks = [p for p in TASKS.rglob("*") if "__pycache__" not in p.parts]
    return _base_key(
        model_cfg,
        hw,
        model_dir,
        eval={k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "name"},
        tasks=hashlib.sha256(b"".join(p.read_bytes() for p in sorted(tasks) if p.is_file())).hexdigest(),
        lm_eval=version("lm-eval"),
    )


def _base_key(model_cfg: DictConfig, hw: DictConfig, model_dir: str, **what: Any) -> str:
    """A key for what the base model computes: its config and files, the hardware profile, and `what`."""
    from importlib.metadata import version

    def fingerprint(files) -> list:
        return [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(files) if p.is_file()]

    payload = {
        "model": OmegaConf.to_container(model_cfg, resolve=True),
        "model_files": fingerprint(Path(model_dir).glob("*")) if Path(model_dir).is_dir() else model_dir,
        "hardware": OmegaConf.to_container(hw, resolve=True),
        "torch": version("torch"),
        "transformers": version("transformers"),
        **what,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def base_results(cfg: DictConfig, model_cfg: DictConfig, hw: DictConfig, cache_dir: str, model, tokenizer):
    """(results, seconds, from_cache) for the base model: computed once per base, then read from the cache."""
    from rlhf import hardware, models

    cache = Path(cache_dir).expanduser()
    key = base_cache_key(cfg, model_cfg, hw, models.local_dir(model_cfg, cache))
    file = cache / "eval" / f"{model_cfg.name}-{key}.json"
    if file.is_file():
        return json.loads(file.read_text()), 0.0, True
    print(f"Evaluating the base model on {', '.join(cfg.tasks)} (once; cached in {file.parent})")
    started = time.time()
    results = evaluate(cfg, model, tokenizer, hardware.precision(hw))
    _write_atomically(file, results)
    return results, time.time() - started, False


def base_samples(
    settings: DictConfig, model_cfg: DictConfig, hw: DictConfig, cache_dir: str, model, tokenizer, prompts
) -> list[str]:
    """The base model's greedy completions of the sample prompts: generated once per base, then cached."""
    from rlhf import models
    from rlhf import report as out

    cache = Path(cache_dir).expanduser()
    samples = OmegaConf.to_container(settings, resolve=True)
    key = _base_key(model_cfg, hw, models.local_dir(model_cfg, cache), prompts=prompts, samples=samples)
    file = cache / "samples" / f"{model_cfg.name}-{key}.json"
    if file.is_file():
        return json.loads(file.read_text())
    completions = out.generate(model, tokenizer, prompts, settings)
    _write_atomically(file, completions)
    return completions


def _write_atomically(file: Path, value: Any) -> None:
    """Concurrent sweep jobs may write the same entry: each writes its own file, then renames it."""
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    tmp.replace(file)


def after_training(
    cfg: DictConfig, base, model, tokenizer, hw: DictConfig, run_dir: Path, title: str
) -> dict:
    """Score the tuned model and write eval.json / eval.md beside it."""
    from rlhf import hardware

    before, base_seconds, cached = base
    print(f"Evaluating the tuned model on {', '.join(cfg.tasks)}")
    started = time.time()
    after = evaluate(cfg, model, tokenizer, hardware.precision(hw))
    result = report(cfg, before, after, {"before": base_seconds, "after": time.time() - started}, cached)
    result["file"] = str(write(run_dir, result, title))
    return result


def report(cfg: DictConfig, before: dict, after: dict, seconds: dict[str, float], base_cached: bool) -> dict:
    """What eval.json holds: the settings, both sides, the delta per metric and the standard errors."""
    b, a = before["scores"], after["scores"]
    return {
        "tasks": list(cfg.tasks),
        "limit": cfg.limit,
        "num_fewshot": cfg.num_fewshot,
        "apply_chat_template": cfg.apply_chat_template,
        "before": b,
        "after": a,
        "delta": {k: round(a[k] - b[k], 6) for k in a if k in b},
        "stderr": {"before": before["stderr"], "after": after["stderr"]},
        "base_from_cache": base_cached,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }


def markdown(result: dict[str, Any], title: str) -> str:
    lines = [
        f"# {title}",
        "",
        f"tasks: {', '.join(result['tasks'])}; limit: {result['limit']}; few-shot: {result['num_fewshot']}; "
        f"chat template: {result['apply_chat_template']}",
        "",
        "| task | metric | before | after | delta | stderr (after) |",
        "|---|---|---|---|---|---|",
    ]
    for key, after in result["after"].items():
        task, metric = key.split("/", 1)
        before, delta = result["before"].get(key), result["delta"].get(key)
        stderr = result["stderr"]["after"].get(key)
        lines.append(
            f"| {task} | {metric} | {_num(before)} | {_num(after)} | {_num(delta, signed=True)} | {_num(stderr)} |"
        )
    return "\n".join(lines) + "\n"


def _num(value: float | None, signed: bool = False) -> str:
    return "-" if value is None else (f"{value:+.3f}" if signed else f"{value:.3f}")


def print_table(result: dict[str, Any]) -> None:
    width = max((len(k) for k in result["after"]), default=10)
    print(f"\n{'eval (lm-eval)':<{width}}  {'before':>7}  {'after':>7}  {'delta':>7}")
    for key, after in result["after"].items():
        before, delta = result["before"].get(key), result["delta"].get(key)
        print(f"{key:<{width}}  {_num(before):>7}  {_num(after):>7}  {_num(delta, signed=True):>7}")


def write(run_dir: Path, result: dict[str, Any], title: str) -> Path:
    """eval.json + eval.md; a name already taken gets a numbered one, so nothing is overwritten."""
    stem, n = "eval", 1
    while (run_dir / f"{stem}.json").exists() or (run_dir / f"{stem}.md").exists():
        n += 1
        stem = f"eval-{n}"
    (run_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (run_dir / f"{stem}.md").write_text(markdown(result, title))
    return run_dir / f"{stem}.json"


# --------------------------------------------------------------------------- python -m rlhf.evaluate

USAGE = "python -m rlhf.evaluate run=<run dir> [eval=quick|standard] [eval.limit=N] [eval.tasks=[...]] [hardware=...]"


def settings(argv: list[str]) -> tuple[Path, DictConfig]:
    """The run directory and its config, with the eval (and hardware) overrides of the command line."""
    from hydra import compose, initialize_config_dir

    from rlhf.__main__ import CONF
    from rlhf.config import register_schemas, validate

    runs = [a.split("=", 1)[1] for a in argv if a.startswith("run=")]
    overrides = [a for a in argv if not a.startswith("run=")]
    if len(runs) != 1:
        raise UserError(f"run: give exactly one run directory; fix: {USAGE}")
    run = Path(runs[0]).expanduser()
    if not (run / ".hydra" / "config.yaml").is_file() or not (run / "model").is_dir():
        raise UserError(
            f"run={runs[0]}: not a finished rlhf run (no .hydra/config.yaml or model/); fix: {USAGE}"
        )
    other = [o for o in overrides if not o.lstrip("+~").startswith(("eval", "hardware", "cache_dir"))]
    if other:
        raise UserError(f"{other[0]}: only eval.*, hardware.* and cache_dir can change here; fix: {USAGE}")
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    register_schemas()
    hardware = [o for o in overrides if o.lstrip("+~").startswith("hardware")]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        # the run's own eval settings unless the command line names others (a run with eval=none gets quick)
        chosen = any(o.startswith("eval") for o in overrides) or cfg.eval.name == "none"
        given = compose("config", overrides=[f"model={cfg.model.name}", *overrides])
        profile = given.hardware if hardware else cfg.hardware
        if profile.name == "auto":
            # as the run resolved it: the profile this machine gets, with the run's and these hardware.* keys
            from rlhf.hardware import detect

            ran = OmegaConf.load(run / ".hydra" / "overrides.yaml")
            keys = [o for o in [*ran, *hardware] if o.lstrip("+~").startswith("hardware.")]
            profile = compose("config", overrides=[f"hardware={detect()}", *keys]).hardware
    OmegaConf.set_struct(cfg, False)
    cfg.eval = given.eval if chosen else cfg.eval
    cfg.cache_dir = given.cache_dir
    cfg.hardware = profile
    validate(cfg)
    if cfg.method.name == "rm" or not cfg.eval.tasks:
        raise UserError(
            f"run={runs[0]}: method={cfg.method.name} with eval={cfg.eval.name} has nothing lm-eval can score; "
            "fix: a reward model is scored by heldout_pairwise_accuracy; for a policy run pass eval=quick"
        )
    return run, cfg


def load_tuned(run: Path, base_model, cfg: DictConfig, hw: DictConfig):
    """The run's model/: a PEFT adapter onto the (already loaded) base, or full weights."""
    from rlhf import models

    if (run / "model" / "adapter_config.json").is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(base_model, run / "model")
    model_cfg = OmegaConf.merge(cfg.model, {"source": "pretrained", "path": str(run / "model")})
    return models.load(model_cfg, hw, cfg.cache_dir)[0]


def cli(argv: list[str] | None = None) -> None:
    from rlhf import runtime
    from rlhf.errors import EXIT_CODE, describe, report

    runtime.tune_malloc()
    runtime.tune_blas()
    runtime.quiet_libraries()
    argv = sys.argv[1:] if argv is None else argv
    try:
        from rlhf import hardware, models

        run, cfg = settings(argv)
        hw = hardware.resolve(cfg.hardware)
        check(cfg.eval)
        model, tokenizer = models.load(cfg.model, hw, cfg.cache_dir)
    except Exception as ex:
        problems = describe(ex)
        if problems is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        report(problems)
        sys.exit(EXIT_CODE)
    base = base_results(cfg.eval, cfg.model, hw, cfg.cache_dir, model, tokenizer)
    tuned = load_tuned(run, model, cfg, hw)
    title = f"{cfg.method.name} on {cfg.model.name}, evaluated again"
    result = after_training(cfg.eval, base, tuned, tokenizer, hw, run, title)
    print_table(result)
    print(f"\nwrote {result['file']}")


if __name__ == "__main__":
    cli()
