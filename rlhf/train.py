"""The training run, stage by stage: validate -> load -> train -> save -> evaluate -> report.

`run(cfg, run_dir)` is what `python -m rlhf` does with the composed config (rlhf/__main__.py is the Hydra
app around it; tests call it in-process with a composed config).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rlhf import sweep, tracking
from rlhf.errors import UserError, discard_run_on_bad_input
from rlhf.runtime import is_main_process
from rlhf.validate import check_resolved_profile, validate


def run(cfg: DictConfig, run_dir: Path) -> float | None:
    """Train, save, evaluate and report one run into `run_dir`; return what a sweeper optimises."""
    started = time.time()
    with discard_run_on_bad_input(run_dir):
        validate(cfg)  # every config error at once, before torch is even imported
        from rlhf import data, methods

        method = methods.get(cfg.method.name)
        dataset = data.load(cfg.data, method.DATA_FORMATS, cfg.method.name)  # bad rows fail here: file:line
        heldout = (
            data.load(cfg.data, method.DATA_FORMATS, cfg.method.name, "eval_path")
            if cfg.data.eval_path
            else None
        )
        from rlhf import (  # torch, transformers: after the cheap checks
            choices,
            config,
            evaluate,
            models,
            rewards,
        )

        hw = config.resolve_hardware(cfg.hardware)  # auto -> the profile this machine gets; CUDA needs CUDA
        check_resolved_profile(cfg, hw)  # the method x hardware rules again, on the profile auto picked
        choices.check(cfg)  # the libraries' own lists: scheduler, optimizer, loss type, target modules
        reward = rewards.build(cfg.reward) if method.USES_REWARD else []
        evaluates = bool(cfg.eval.tasks) and method.HEAD == "causal-lm"  # lm-eval scores language models
        if evaluates:
            evaluate.check(cfg.eval)  # unknown tasks, or data that offline cannot be had
        model, tokenizer = models.load(cfg.model, hw, cfg.cache_dir, method.HEAD)

        # the base model's scores, before training changes it (only rank 0 evaluates; cached per base model)
        on_rank0 = evaluates and is_main_process()
        base = (
            evaluate.base_results(cfg.eval, cfg.model, hw, cfg.cache_dir, model, tokenizer)
            if on_rank0
            else None
        )

        from transformers import set_seed

        set_seed(
            cfg.seed
        )  # adapter init and data order, whether the base eval ran, was cached or was skipped
        # generations for fixed prompts before and after training (a reward model scores, it does not generate)
        prompts = data.sample_prompts(cfg.data, dataset) if method.HEAD == "causal-lm" else []
        samples = run_dir / "samples.jsonl"
        if prompts and is_main_process():  # greedy: the base model's are cached like its scores
            before = evaluate.base_samples(
                cfg.samples, cfg.model, hw, cfg.cache_dir, model, tokenizer, prompts
            )
            write_samples(samples, "before", prompts, before)

        from rlhf.metrics import MetricsFile

        tracker = tracking.start(cfg, run_dir)  # logger=wandb on rank 0: this job's wandb run; else nothing
        metrics = MetricsFile(run_dir / "metrics.jsonl", forward=tracker.log)
        inputs = methods.Inputs(
            model=model,
            tokenizer=tokenizer,
            rows=dataset.rows,
            config=OmegaConf.to_object(cfg.method),
            hardware=hw,
            run=methods.RunInfo(dir=run_dir, seed=cfg.seed),
            metrics=metrics,
            eval_rows=heldout.rows if heldout else [],
            rewards=reward,
        )
        try:
            result = method.train(inputs)  # a value the trainer's constructor rejects is still bad input
        except UserError:
            tracking.abort()  # before its directory goes: the wandb run of a run that never trained
            raise
    if not is_main_process():
        return None

    from rlhf import generation, plots, summary

    models.save(result.model, tokenizer, run_dir / "model")
    if prompts:
        after = generation.greedy(result.model, tokenizer, prompts, cfg.samples.max_new_tokens)
        write_samples(samples, "after", prompts, after)
    title = f"{cfg.method.name} on {cfg.model.name}"
    scores = (
        evaluate.after_training(cfg.eval, base, result.model, tokenizer, hw, run_dir, title) if base else None
    )
    if cfg.export.merge:
        models.save_merged(result.model, tokenizer, run_dir / "merged")
    plots.plot_curves(run_dir, metrics.rows, title)
    record = summary.build(cfg, hw, result, metrics.rows, len(dataset.rows), started, scores)
    summary.write_json(run_dir / "summary.json", record)  # written last: its presence marks a finished run
    summary.print_run_table(record, run_dir)
    tracker.finish(record)  # prints the `wandb sync` command
    if scores:
        from rlhf.evaluate.tables import print_eval_table

        print_eval_table(scores)  # the run ends with the before/after table
    return sweep.objective(record, cfg.optimize_metric)  # what a sweeper optimises


def write_samples(path: Path, stage: str, prompts: list[list[dict]], completions: list[str]) -> None:
    """samples.jsonl: the sample prompts' completions, before and after training."""
    with path.open("a") as f:
        for prompt, completion in zip(prompts, completions, strict=True):
            row = {"stage": stage, "prompt": prompt[-1]["content"], "completion": completion}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
