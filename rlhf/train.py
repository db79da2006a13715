"""The training run, stage by stage: validate -> load -> train -> save -> evaluate -> report.

`run(cfg, run_dir)` is what `python -m rlhf` does with the composed config (rlhf/__main__.py is the Hydra
app around it; tests call it in-process). A run checkpoints as its plan says (rlhf.checkpoint), stops at a
step boundary on SIGINT / SIGTERM (interrupted.json, exit 128 + the signal), and `resume=` continues it
from its newest complete checkpoint to the same end an uninterrupted run reaches.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rlhf import checkpoint, sweep, tracking
from rlhf.errors import UserError, discard_run_on_bad_input
from rlhf.runtime import PEAKS, inside_launch, is_main_process, leave_out
from rlhf.validate import check_resolved_profile, validate

INTERRUPTED = checkpoint.INTERRUPTED


def run(cfg: DictConfig, run_dir: Path, whole_process: bool = False) -> float | None:
    """Train, save, evaluate and report one run into `run_dir`; return what a sweeper optimises.

    `whole_process`: this run is all the process will do (not one job of a sweep), so the libraries it
    cannot use may be left out of it (hardware.lean_imports).
    """
    started = time.time()
    PEAKS.start()
    with discard_run_on_bad_input(run_dir):
        from rlhf.distributed import fsdp_on_cpu

        fsdp_on_cpu()
        validate(cfg)  # every config error at once, before torch is even imported
        resume_from = resume_point(cfg, run_dir)
        if resume_from == "finished":
            return sweep.objective(json.loads((run_dir / "summary.json").read_text()), cfg.optimize_metric)
        from rlhf import data, methods

        method = methods.get(cfg.method.name)
        dataset = data.load(cfg.data, method.DATA_FORMATS, cfg.method.name)  # bad rows fail here: file:line
        data.load_heldout(cfg.data, dataset, method.DATA_FORMATS, cfg.method.name, cfg.seed)  # and there
        from rlhf import choices, config, evaluate, models, rewards  # torch, transformers: after the checks

        # auto -> the profile this machine gets; CUDA needs CUDA; a frozen base may load in bf16
        hw = config.resolve_hardware(cfg.hardware, frozen_base=methods.frozen_base(cfg.method))
        check_resolved_profile(cfg, hw)  # the method x hardware rules again, on the profile auto picked
        left_out = leave_out(unused_libraries(cfg, hw)) if whole_process and hw.lean_imports else []
        choices.check(cfg)  # the libraries' own lists: scheduler, optimizer, loss type, target modules
        # again, now with the model's tokenizer: rows longer than the profile's max_seq_length are truncated
        # or dropped as data.too_long says, and counted
        fit = {"tokenizer": data.tokenizer_for(cfg.model, cfg.cache_dir), "max_length": hw.max_seq_length}
        dataset = data.load(cfg.data, method.DATA_FORMATS, cfg.method.name, **fit)
        dataset, heldout = data.load_heldout(
            cfg.data, dataset, method.DATA_FORMATS, cfg.method.name, cfg.seed, **fit
        )
        from rlhf.plan import check as check_memory

        # refuse what cannot fit before the weights load
        check_memory(cfg, hw, max(dataset.lengths, default=None))
        reward = rewards.build(cfg.reward) if method.USES_REWARD else []
        evaluates = bool(cfg.eval.tasks) and method.HEAD == "causal-lm"  # lm-eval scores language models
        if evaluates:
            evaluate.check(cfg.eval)  # unknown tasks, or data that offline cannot be had
        from transformers import set_seed

        set_seed(cfg.seed)  # a head the base lacks (rm's score) is initialised while loading
        model, tokenizer = models.load(cfg.model, hw, cfg.cache_dir, method.HEAD, to_train=True)

        from rlhf.models.partitioned import whole_weights

        with whole_weights(model):  # under ZeRO-3 every rank gathers the weights for rank 0's use here
            # the base model's scores, before training changes it (only rank 0 evaluates; cached per base model)
            on_rank0 = evaluates and is_main_process()
            base = (
                evaluate.base_results(cfg.eval, cfg.model, hw, cfg.cache_dir, model, tokenizer)
                if on_rank0
                else None
            )
            # adapter init and data order, whether the base eval ran, was cached or was skipped
            set_seed(cfg.seed)
            # generations for fixed prompts before and after training (a reward model scores, not generates)
            prompts = data.sample_prompts(cfg.data, dataset) if method.HEAD == "causal-lm" else []
            samples = run_dir / "samples.jsonl"
            if prompts and is_main_process() and resume_from is None:  # a resumed run has its "before" rows
                before = evaluate.base_samples(
                    cfg.samples, cfg.model, hw, cfg.cache_dir, model, tokenizer, prompts
                )
                write_samples(samples, "before", prompts, before)

        from rlhf.metrics import MetricsFile

        step = checkpoint.step_of(resume_from) if resume_from else 0
        tracker = tracking.start(cfg, run_dir, resume=resume_from is not None)  # rank 0 + logger=wandb
        metrics = MetricsFile(run_dir / "metrics.jsonl", forward=tracker.log, keep_until=step)
        plan = checkpoint.Plan(
            run_dir=run_dir,
            every=cfg.checkpoint.every if cfg.checkpoint.every is not None else hw.checkpoint_every,
            keep=cfg.checkpoint.keep if cfg.checkpoint.keep is not None else hw.checkpoint_keep,
            at_end=cfg.checkpoint.at_end,
            resume_from=resume_from,
            stop=checkpoint.StopRequest(extra=sweep.preempt_signals()),
            saves=checkpoint.Saves.before(resume_from),
        )
        from rlhf import monitor

        # every logged row passes the health rules on its way to metrics.jsonl (a resumed run replays its own)
        rules = monitor.rules_of(cfg.monitor)
        watch = monitor.Monitor(metrics, rules, getattr(method, "SIGNALS", {}), plan, replay=metrics.rows)
        inputs = methods.Inputs(
            model=model,
            tokenizer=tokenizer,
            rows=dataset.rows,
            config=OmegaConf.to_object(cfg.method),
            hardware=hw,
            run=methods.RunInfo(dir=run_dir, seed=cfg.seed),
            metrics=watch,
            eval_rows=heldout.rows if heldout else [],
            rewards=reward,
            checkpoints=plan,
            packing=cfg.data.packing,
        )
        from rlhf.runtime import release_memory

        release_memory()  # what loading and the base eval freed, before training's own peak
        PEAKS.end("load")  # loading, the plan and the base eval: training's peak is counted from here
        if resume_from:
            print(f"Resuming {run_dir} from {resume_from.name}")
        plan.stop.install()  # SIGINT / SIGTERM: finish the step, checkpoint, stop
        try:
            result = method.train(inputs)  # a value the trainer's constructor rejects is still bad input
        except UserError:
            tracking.abort()  # before its directory goes: the wandb run of a run that never trained
            raise
        finally:
            plan.stop.uninstall()
        PEAKS.end("train")
    shutil.rmtree(checkpoint.incoming(run_dir), ignore_errors=True)  # the trainers' scratch directory
    if plan.stopping:
        interrupted(run_dir, plan, tracker)
    from rlhf.distributed import gather_weights, leave_launch

    whole = gather_weights(result.model)  # under FSDP or ZeRO-3 every rank sends its shard; rank 0 saves them
    if not is_main_process():
        leave_launch()  # ends this process

    from rlhf import generation, hardware, plots, summary

    release_memory()  # training's activations and optimizer scratch, before the eval stage

    models.save(result.model, tokenizer, run_dir / "model", state_dict=whole)
    if whole is not None:  # the trained model is sharded: what follows uses model/ as a user will load it
        del whole
        result.model = models.load_trained(run_dir / "model", cfg.model, hw, cfg.cache_dir, method.HEAD)
    save_heads(result.heads, run_dir / "model")
    if prompts:
        after = generation.greedy(result.model, tokenizer, prompts, cfg.samples.max_new_tokens)
        write_samples(samples, "after", prompts, after)
    title = f"{cfg.method.name} on {cfg.model.name}"
    scores = (
        evaluate.after_training(cfg.eval, base, result.model, tokenizer, hw, run_dir, title) if base else None
    )
    plots.plot_curves(run_dir, metrics.rows, title)
    record = summary.build(cfg, hw, result, metrics.rows, len(dataset.rows), started, scores)
    if cfg.export.merge:  # last use of the adapter model: merging folds it into the weights in place
        models.save_merged(result.model, tokenizer, run_dir / "merged")
    record.update(
        data_truncated=dataset.truncated,
        data_dropped=dataset.dropped,
        resumed_from_step=step or None,
        checkpoints_written=plan.saves.count,
        checkpoint_seconds=round(plan.saves.seconds, 2),
        gpu=hardware.gpu(),  # the GPU this run saw (None on a CPU)
        libraries_left_out=left_out,
        alarms=watch.summary(),
        stopped_early=watch.stopped_early(),
    )
    summary.write_json(run_dir / "summary.json", record)  # written last: its presence marks a finished run
    summary.print_run_table(record, run_dir)
    tracker.finish(record)  # prints the `wandb sync` command
    if scores:
        from rlhf.evaluate.tables import print_eval_table

        print_eval_table(scores)  # the run ends with the before/after table
    return sweep.objective(record, cfg.optimize_metric)  # what a sweeper optimises


# the optimizers transformers builds from torch alone; any other (8-bit, paged, lion, ...) may need bitsandbytes
TORCH_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adagrad", "rmsprop")


def unused_libraries(cfg: DictConfig, hw) -> list[str]:
    """The optional libraries this run's settings cannot use (rlhf.runtime.leave_out)."""
    from rlhf.distributed import in_effect

    unused = []
    if not hw.load_in_4bit and hw.optim in TORCH_OPTIMIZERS:
        unused.append("bitsandbytes")
    if in_effect(cfg)[1] != "deepspeed":  # the launch's engine inside one, else the preset's
        unused.append("deepspeed")
    if cfg.logger.name != "wandb":
        unused.append("wandb")
    return unused


def resume_point(cfg: DictConfig, run_dir: Path) -> Path | str | None:
    """The checkpoint a run continues from: None for a new run, "finished" for one with nothing left to do.

    resume=auto starts afresh where hydra.run.dir holds no complete checkpoint; resume=<dir> needs one. A
    finished run (summary.json) continues only with a larger method.max_steps than its last checkpoint's
    step; its old summary is kept as summary-step-N.json.
    """
    mode = cfg.resume or ("auto" if sweep.requeued(run_dir) else "")
    if not mode:
        return None
    found = checkpoint.latest(run_dir)
    finished = run_dir / "summary.json"
    if finished.is_file():
        if found is None or checkpoint.step_of(found) >= cfg.method.max_steps:
            print(
                f"resume={mode}: {run_dir} is finished (summary.json); nothing to resume "
                "(with a larger method.max_steps it trains on from its last checkpoint)"
            )
            return "finished"
        finished.rename(run_dir / f"summary-step-{checkpoint.step_of(found)}.json")
    if found is None:
        if mode == "auto":  # nothing to continue: what an earlier attempt left goes, the run starts afresh
            for name in ("samples.jsonl", "metrics.jsonl", INTERRUPTED, "failed.json"):
                (run_dir / name).unlink(missing_ok=True)
            shutil.rmtree(checkpoint.root(run_dir), ignore_errors=True)
            return None
        raise UserError(
            f"resume={cfg.resume}: no complete checkpoint in {checkpoint.root(run_dir)}; fix: run it again "
            "without resume= (its settings are in .hydra/overrides.yaml), or resume=auto to start afresh"
        )
    for name in (INTERRUPTED, "failed.json"):  # no longer interrupted or failed: it is running again
        (run_dir / name).unlink(missing_ok=True)
    keep_before_samples(run_dir / "samples.jsonl")
    return found


def interrupted(run_dir: Path, plan: checkpoint.Plan, tracker) -> None:
    """Stopped by a signal: interrupted.json (step, time, the command that resumes), no summary; exit 128 + n."""
    import signal

    saved = checkpoint.latest(run_dir)
    name = signal.Signals(plan.stop.signal).name
    command = f"python -m rlhf resume={run_dir}"
    if is_main_process():
        record = {
            "signal": name,
            "step": checkpoint.step_of(saved) if saved else None,
            "checkpoint": str(saved) if saved else None,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "resume": command,
        }
        (run_dir / INTERRUPTED).write_text(json.dumps(record, indent=2) + "\n")
        print(f"\n{name}: stopped after step {record['step']}; continue with: {command}", file=sys.stderr)
    tracker.pause()
    if plan.stop.signal in sweep.preempt_signals() and not inside_launch():
        # submitit's own handler for its warning: it requeues the job, which then resumes (sweep.requeued);
        # a launch's ranks leave that to the job's process, which started the launch (rlhf.distributed.run)
        handler = plan.stop.handed_over.get(plan.stop.signal)
        if callable(handler):
            handler(plan.stop.signal, None)
    raise SystemExit(128 + plan.stop.signal)


def write_samples(path: Path, stage: str, prompts: list[list[dict]], completions: list[str]) -> None:
    """samples.jsonl: the sample prompts' completions, before and after training."""
    with path.open("a") as f:
        for prompt, completion in zip(prompts, completions, strict=True):
            row = {"stage": stage, "prompt": prompt[-1]["content"], "completion": completion}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def keep_before_samples(path: Path) -> None:
    """A resumed run writes its "after" samples again: drop any it wrote before."""
    if path.is_file():
        rows = [line for line in path.read_text().splitlines() if json.loads(line)["stage"] == "before"]
        path.write_text("".join(f"{line}\n" for line in rows))


def save_heads(heads: dict, model_dir: Path) -> None:
    """Modules a method trains beside the model (our PPO's value head), as <name>.safetensors in model/."""
    from safetensors.torch import save_file

    for name, module in heads.items():
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
            model_dir / f"{name}.safetensors",
        )
