"""`python -m rlhf.evaluate run=<run dir> [eval=...] [eval.limit=N] [hardware=...]`: evaluate a finished run
again. It loads the run's model (base + adapter, or full weights) and writes eval-2.json / eval-2.md (the next
free name: nothing is overwritten)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rlhf import cli, config, evaluate, hardware, methods, models
from rlhf.errors import UserError
from rlhf.evaluate.tables import print_eval_table
from rlhf.schema import ModelConfig
from rlhf.validate import validate

USAGE = "python -m rlhf.evaluate run=<run dir> [eval=quick|standard] [eval.limit=N] [eval.tasks=[...]] [hardware=...]"


def settings(argv: list[str]) -> tuple[Path, DictConfig]:
    """The run directory and its config, with the eval (and hardware) overrides of the command line."""
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
    hardware_keys = [o for o in overrides if o.lstrip("+~").startswith("hardware")]
    # the run's own eval settings unless the command line names others (a run with eval=none gets quick)
    chosen = any(o.startswith("eval") for o in overrides) or cfg.eval.name == "none"
    given = config.compose([f"model={cfg.model.name}", *overrides])
    profile = given.hardware if hardware_keys else cfg.hardware
    if profile.name == "auto":
        # as the run resolved it: the profile this machine gets, with the run's and these hardware.* keys
        ran = OmegaConf.load(run / ".hydra" / "overrides.yaml")
        keys = [o for o in [*ran, *hardware_keys] if o.lstrip("+~").startswith("hardware.")]
        profile = config.compose([f"hardware={hardware.detect()}", *keys]).hardware
    OmegaConf.set_struct(cfg, False)
    # a run saved before a model key existed (attn_implementation) gets that key's default
    cfg.model = OmegaConf.merge(OmegaConf.structured(ModelConfig), cfg.model)
    cfg.eval = given.eval if chosen else cfg.eval
    cfg.cache_dir = given.cache_dir
    cfg.hardware = profile
    validate(cfg)
    if methods.get(cfg.method.name).HEAD != "causal-lm" or not cfg.eval.tasks:
        raise UserError(
            f"run={runs[0]}: method={cfg.method.name} with eval={cfg.eval.name} has nothing lm-eval can score; "
            "fix: a reward model is scored by heldout_pairwise_accuracy; for a policy run pass eval=quick"
        )
    return run, cfg


def main(argv: list[str]) -> None:
    run, cfg = settings(argv)
    hw = hardware.resolve(cfg.hardware, methods.frozen_base(cfg.method))  # as the run loaded it
    evaluate.check(cfg.eval)
    model, tokenizer = models.load(cfg.model, hw, cfg.cache_dir)
    base = evaluate.base_results(cfg.eval, cfg.model, hw, cfg.cache_dir, model, tokenizer)
    tuned = models.load_trained(run / "model", cfg.model, hw, cfg.cache_dir, base=model)
    title = f"{cfg.method.name} on {cfg.model.name}, evaluated again"
    result = evaluate.after_training(cfg.eval, base, tuned, tokenizer, hw, run, title)
    print_eval_table(result)
    print(f"\nwrote {result['file']}")


if __name__ == "__main__":
    cli.run(main)
