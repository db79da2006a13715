"""`python -m rlhf`: compose -> validate -> load -> train -> save -> report. See conf/config.yaml."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rlhf import runtime, sweep, tracking
from rlhf.config import register_schemas, validate
from rlhf.errors import HYDRA_START_FILES, UserError, discard_run_on_bad_input, install_hydra_reporter, report

CONF = Path(__file__).resolve().parent.parent / "conf"  # an absolute path: the console script finds it too


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="config")
@sweep.keep_going  # in a multirun, a crashed job leaves failed.json and the sweep goes on
def main(cfg: DictConfig) -> float | None:
    started, run_dir = time.time(), Path(HydraConfig.get().runtime.output_dir)
    with discard_run_on_bad_input(run_dir):
        validate(cfg)  # every config error at once, before torch is even imported
        from rlhf import data
        from rlhf.methods import Inputs, get

        method = get(cfg.method.name)
        dataset = data.load(cfg.data, method.DATA_FORMATS, cfg.method.name)  # bad rows fail here: file:line
        heldout = (
            data.load(cfg.data, method.DATA_FORMATS, cfg.method.name, "eval_path")
            if cfg.data.eval_path
            else None
        )
        from rlhf import evaluate, hardware, models, rewards  # torch, transformers: after the cheap checks
        from rlhf import report as out

        hw = hardware.resolve(cfg.hardware)  # auto -> a concrete profile; a CUDA profile needs CUDA
        reward = rewards.build(cfg.reward) if method.USES_REWARD else []
        evaluates = bool(cfg.eval.tasks) and method.HEAD == "causal-lm"  # lm-eval scores language models
        if evaluates:
            evaluate.check(cfg.eval)  # unknown tasks, or data that offline cannot be had
        model, tokenizer = models.load(cfg.model, hw, cfg.cache_dir, method.HEAD)

    # the base model's scores, before training changes it (only rank 0 evaluates; cached per base model)
    on_rank0 = evaluates and out.is_main_process()
    base = (
        evaluate.base_results(cfg.eval, cfg.model, hw, cfg.cache_dir, model, tokenizer) if on_rank0 else None
    )

    from transformers import set_seed

    set_seed(cfg.seed)  # adapter init and data order, whether the base eval ran, was cached or was skipped
    # generations for fixed prompts before and after training (a reward model scores, it does not generate)
    prompts = data.sample_prompts(cfg.data, dataset) if method.HEAD == "causal-lm" else []
    samples = run_dir / "samples.jsonl"
    if prompts and out.is_main_process():  # greedy: the base model's are cached like its scores
        before = evaluate.base_samples(cfg.samples, cfg.model, hw, cfg.cache_dir, model, tokenizer, prompts)
        out.write_samples(samples, "before", prompts, before)

    tracker = tracking.start(cfg, run_dir)  # logger=wandb on rank 0: this job's wandb run; else does nothing
    metrics = out.MetricsFile(run_dir / "metrics.jsonl", forward=tracker.log)
    args = {**hardware.trainer_args(hw, method.BATCH), **out.trainer_io(run_dir, cfg.seed)}
    result = method.train(
        Inputs(
            model,
            tokenizer,
            dataset.rows,
            cfg.method,
            args,
            [metrics],
            heldout.rows if heldout else [],
            reward,
        )
    )
    if not out.is_main_process():
        return None

    models.save(result.model, tokenizer, run_dir / "model")
    if prompts:
        out.write_samples(
            samples, "after", prompts, out.generate(result.model, tokenizer, prompts, cfg.samples)
        )
    title = f"{cfg.method.name} on {cfg.model.name}"
    scores = (
        evaluate.after_training(cfg.eval, base, result.model, tokenizer, hw, run_dir, title) if base else None
    )
    if cfg.export.merge:
        models.save_merged(result.model, tokenizer, run_dir / "merged")
    out.plot(run_dir, metrics.rows, title)
    summary = out.summary(cfg, hw, result, metrics.rows, len(dataset.rows), started, scores)
    out.write_json(run_dir / "summary.json", summary)  # written last: its presence marks a finished run
    out.print_table(summary, run_dir)
    tracker.finish(summary)  # prints the `wandb sync` command
    if scores:
        evaluate.print_table(scores)  # the run ends with the before/after table
    return sweep.objective(summary, cfg.optimize_metric)  # what a sweeper optimises


def check_run_dir(argv: list[str]) -> None:
    """Refuse a hydra.run.dir that already holds files, and a multi-process launch without one.

    Hydra's own start-up files do not count: under `accelerate launch` another rank may have written them.
    """
    given = [a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")]
    if (
        given
        and Path(given[-1]).is_dir()
        and any(p.name not in HYDRA_START_FILES for p in Path(given[-1]).iterdir())
    ):
        raise UserError(f"hydra.run.dir={given[-1]}: already holds files; fix: choose a new directory")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not given:
        raise UserError(
            "hydra.run.dir: under a multi-process launch each process computes its own timestamped "
            "directory; fix: pass hydra.run.dir=outputs/<name> explicitly"
        )


def cli() -> None:
    """The console script `rlhf` (= python -m rlhf)."""
    runtime.tune_malloc()
    runtime.tune_blas()
    runtime.quiet_libraries()
    install_hydra_reporter()
    register_schemas()
    try:
        check_run_dir(sys.argv[1:])
    except UserError as e:
        report([str(e)])
        sys.exit(2)
    main()


if __name__ == "__main__":
    cli()
