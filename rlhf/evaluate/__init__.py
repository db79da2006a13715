"""The evaluation stage: lm-eval on the model in memory, before and after training.

`python -m rlhf.evaluate run=<run dir> [eval=... eval.limit=...]` evaluates a finished run again
(evaluate/__main__.py); eval.json, eval.md and the terminal table are evaluate/tables.py.

Results are flat `{"<task>/<metric>": value}` dicts. The base model's results are cached on disk per
(model, precision, tasks and their files, limit, few-shot, chat template, library versions), and so are
its greedy sample generations, so a sweep and every later run on the same base computes them once.
`python -m rlhf.models` (make setup) computes both for the default run ahead of it.
"""

from __future__ import annotations

import functools
import hashlib
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlhf import cache, generation, hub
from rlhf.errors import UserError
from rlhf.evaluate.tables import record, write
from rlhf.runtime import release_memory

TASKS = Path(__file__).resolve().parent.parent / "tasks"  # eval=quick's tasks: lm-eval YAMLs, data, checkers


def task_dirs(cfg: DictConfig) -> tuple[str, ...]:
    """Ours (rlhf/tasks) and the user's own task directories (eval.include_path)."""
    return (str(TASKS), *(str(Path(p).expanduser().resolve()) for p in cfg.get("include_path", [])))


def task_manager(cfg: DictConfig):
    # lm-eval's own registry is indexed only when a task outside ours and the user's is asked for (17 s on a
    # 2-core CPU)
    local = _task_manager(task_dirs(cfg), include_defaults=False)
    return local if all(t in local.all_tasks for t in cfg.tasks) else _task_manager(task_dirs(cfg), True)


@functools.cache
def _task_manager(dirs: tuple[str, ...], include_defaults: bool):
    """One index per process: the check, the base model's eval and the tuned model's eval share it."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(dirs), include_defaults=include_defaults)


def check(cfg: DictConfig) -> None:
    """Before any weights load: every task exists, and its data can be had (offline: from a local cache)."""
    if not cfg.tasks:
        return
    for path in cfg.get("include_path", []):
        if not Path(path).expanduser().is_dir():
            raise UserError(
                f"eval.include_path={path}: not a directory; fix: give directories of lm-eval task YAMLs"
            )
    manager = task_manager(cfg)
    unknown = [t for t in cfg.tasks if t not in manager.all_tasks]
    if unknown:
        raise UserError(
            f"eval.tasks={list(cfg.tasks)}: unknown task {unknown[0]}; fix: use tasks of lm-eval's registry "
            f"(lm_eval ls tasks) or ours: {', '.join(t for t in manager.all_tasks if t.startswith('rlhf_'))}"
        )
    for task in cfg.tasks:
        for path in sorted(_hub_datasets(manager, task)):
            hub.check_dataset(task, path)


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
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES  # json, csv, parquet, ...: local files

    local = (
        not path or "custom_dataset" in config or Path(path).exists() or path in _PACKAGED_DATASETS_MODULES
    )
    return set() if local else {path}


def score(cfg: DictConfig, model, tokenizer, precision: str) -> dict[str, dict[str, float]]:
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
    # eval.limit items of each task, but every item of the tasks in eval.every_item: two lm-eval calls
    every = [t for t in cfg.tasks if t in cfg.get("every_item", [])]
    limited = [t for t in cfg.tasks if t not in every]
    raw: dict[str, Any] = {}
    with generation.lora_merged(model):
        for tasks, limit, batch in (
            (limited, cfg.limit, cfg.batch_size),
            (every, None, cfg.get("every_item_batch_size", cfg.batch_size)),
        ):
            if not tasks:
                continue
            lm.batch_size_per_gpu = batch  # HFLM's own attribute: its batch for every request type
            results = simple_evaluate(
                model=lm,
                tasks=tasks,
                num_fewshot=cfg.num_fewshot,
                limit=limit,
                apply_chat_template=cfg.apply_chat_template,
                task_manager=task_manager(cfg),
                log_samples=False,
                bootstrap_iters=1000,  # only metrics without a closed-form stderr are bootstrapped
            )
            raw.update(results["results"])
    model.train(was_training)
    release_memory()  # the batches' logits, freed: returned to the OS before the next stage
    return {"scores": flatten_results(raw), "stderr": flatten_results(raw, stderr=True)}


def flatten_results(results: dict[str, dict[str, Any]], stderr: bool = False) -> dict[str, float]:
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


def base_cache_key(cfg: DictConfig, model_cfg: DictConfig, hw: Any, model_dir: str) -> str:
    """Everything that can change the base model's scores, the model's files included."""
    from importlib.metadata import version

    tasks = [p for d in task_dirs(cfg) for p in Path(d).rglob("*") if "__pycache__" not in p.parts]
    return cache.base_key(
        model_cfg,
        hw,
        model_dir,
        eval={k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "name"},
        tasks=hashlib.sha256(b"".join(p.read_bytes() for p in sorted(tasks) if p.is_file())).hexdigest(),
        lm_eval=version("lm-eval"),
    )


def base_results(cfg: DictConfig, model_cfg: DictConfig, hw: Any, cache_dir: str, model, tokenizer):
    """(results, seconds, from_cache) for the base model: computed once per base, then read from the cache."""
    from rlhf.models.sources import local_dir

    key = base_cache_key(cfg, model_cfg, hw, local_dir(model_cfg, Path(cache_dir).expanduser()))
    file = cache.entry(cache_dir, "eval", model_cfg.name, key)
    started = time.time()

    def compute() -> dict:
        print(f"Evaluating the base model on {', '.join(cfg.tasks)} (once; cached in {file.parent})")
        return score(cfg, model, tokenizer, hw.precision)

    results, cached = cache.read_or_compute(file, compute)
    return results, 0.0 if cached else time.time() - started, cached


def base_samples(
    settings: DictConfig, model_cfg: DictConfig, hw: Any, cache_dir: str, model, tokenizer, prompts
) -> list[str]:
    """The base model's greedy completions of the sample prompts: generated once per base, then cached."""
    from rlhf.models.sources import local_dir

    samples = OmegaConf.to_container(settings, resolve=True)
    model_dir = local_dir(model_cfg, Path(cache_dir).expanduser())
    key = cache.base_key(model_cfg, hw, model_dir, prompts=prompts, samples=samples)
    file = cache.entry(cache_dir, "samples", model_cfg.name, key)
    completions, _ = cache.read_or_compute(
        file, lambda: generation.greedy(model, tokenizer, prompts, settings.max_new_tokens)
    )
    return completions


def after_training(cfg: DictConfig, base, model, tokenizer, hw: Any, run_dir: Path, title: str) -> dict:
    """Score the tuned model and write eval.json / eval.md beside it."""
    before, base_seconds, cached = base
    print(f"Evaluating the tuned model on {', '.join(cfg.tasks)}")
    started = time.time()
    after = score(cfg, model, tokenizer, hw.precision)
    result = record(cfg, before, after, {"before": base_seconds, "after": time.time() - started}, cached)
    result["file"] = str(write(run_dir, result, title))
    return result
