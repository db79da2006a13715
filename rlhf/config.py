"""The one config tree: where conf/ is, the schemas in Hydra's ConfigStore, composing it outside a Hydra app,
the hardware profile a run gets, and the `--help` text's groups.

Torch-free: `python -m rlhf --cfg job` and `--help` import this and the method modules' surfaces only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from rlhf import methods, schema

CONF = Path(__file__).resolve().parent.parent / "conf"  # an absolute path: the console script finds it too

# the groups a user picks from, with what each is for (`python -m rlhf --help`); schema/* stay hidden
GROUPS = {
    "model": "the base model to fine-tune",
    "method": "how it trains (one module in rlhf/methods/ each)",
    "data": "the training data (or data.path=FILE)",
    "hardware": "precision, quantization, batch and optimizer for a machine",
    "reward": "what ppo, grpo and rloo maximise",
    "eval": "the lm-eval tasks scored before and after training",
    "logger": "where metrics go besides metrics.jsonl",
    "monitor": "health rules on the training signals (KL, entropy, length, ...) that warn, save or stop",
    "distributed": "how many processes a run trains on and how they share the model (ddp, fsdp, deepspeed)",
    "experiment": "presets from experiments/ that set several groups at once",
    "hparams_search": "a sweeper's search space (with -m)",
}


def if_path(path: str, when: str, value: Any, otherwise: Any = 0) -> Any:
    """`${rlhf.if_path:${.path},instructions,80}`: value when data.path is `when`, else `otherwise` (0).

    A shipped set's own settings (the instruction set trains on its first rows, and has a held-out file)
    do not carry over to a user's file given as data.path=...
    """
    return value if path == when else otherwise


def options(group: str) -> list[str]:
    """The options of a group: the method registry for `method`, the YAML files of conf/<group> otherwise."""
    if group == "method":
        return methods.names()
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def groups_help() -> str:
    width = max(len(g) for g in GROUPS)
    lines = []
    for group, purpose in GROUPS.items():
        lines.append(f"  {group:<{width}}  {purpose}")
        lines.append(f"  {'':<{width}}    {group}: {', '.join(options(group))}")
    return "\n".join(lines)


def register() -> None:
    """Every schema into Hydra's ConfigStore (the methods' own from the registry) and our resolvers."""
    OmegaConf.register_new_resolver("rlhf.if_path", if_path, replace=True)
    OmegaConf.register_new_resolver("rlhf.groups_help", groups_help, replace=True)
    OmegaConf.register_new_resolver("rlhf.options", lambda group: ", ".join(options(group)), replace=True)
    cs = ConfigStore.instance()
    cs.store(name="root_schema", node=schema.RootConfig)
    for group, node in [
        ("model", schema.ModelConfig),
        ("hardware", schema.HardwareConfig),
        ("data", schema.DataConfig),
        ("reward", schema.RewardConfig),
        ("eval", schema.EvalConfig),
        ("logger", schema.LoggerConfig),
        ("monitor", schema.MonitorConfig),
        ("distributed", schema.DistributedConfig),
    ]:
        cs.store(group=f"schema/{group}", name="base", node=node)
    cs.store(group="schema/logger", name="wandb", node=schema.WandbLoggerConfig)
    for name, module in methods.registry().items():
        cs.store(group="schema/method", name=name, node=module.Config)
    # python -m rlhf.synth (conf/synthesize.yaml): its root and one schema per synth mode
    cs.store(name="synth_root_schema", node=schema.SynthRootConfig)
    for name, node in [
        ("magpie", schema.MagpieConfig),
        ("self-instruct", schema.SelfInstructConfig),
        ("preferences", schema.PreferencesConfig),
    ]:
        cs.store(group="schema/synth", name=name, node=node)
    # python -m rlhf.pipeline (conf/pipelines.yaml): its root and a pipeline's stages
    cs.store(name="pipeline_root_schema", node=schema.PipelineRootConfig)
    cs.store(group="schema/pipeline", name="base", node=schema.PipelineConfig)


def compose(overrides: list[str], config_name: str = "config", **kwargs: Any) -> DictConfig:
    """A root config (conf/<config_name>.yaml: `python -m rlhf`'s by default) with these overrides, as its
    command composes it, outside a Hydra app."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register()
    if GlobalHydra.instance().is_initialized():  # inside a Hydra app, or a caller's own initialize
        return hydra_compose(config_name=config_name, overrides=overrides, **kwargs)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides, **kwargs)


def resolve_hardware(node: DictConfig, overrides: list[str] | None = None, frozen_base: bool = True):
    """The run's profile as a typed object: hardware=auto becomes the profile this machine gets, with the
    user's hardware.* overrides (and an experiment's) applied to it, as if they had asked for it.

    `overrides`: the command line's, where no Hydra app is running (an app's own are read from Hydra).
    `frozen_base`: rlhf.methods.frozen_base of the run's method, False where the base must stay float32
    (full fine-tuning, our PPO); see rlhf.hardware.concrete_model_dtype.
    """
    from hydra.core.hydra_config import HydraConfig

    from rlhf import hardware

    if node.name == "auto":
        given = HydraConfig.get().overrides.task if HydraConfig.initialized() else overrides or []
        # the run's overrides again on the profile this machine gets: its hardware.* keys, and those an
        # experiment sets (experiment=sft-low-memory's optimizer), which a profile picked alone would lose
        kept = [o for o in given if o.lstrip("+~").split("=", 1)[0] != "hardware"]
        node = compose([*kept, f"hardware={hardware.detect()}"]).hardware
    return hardware.resolve(node, frozen_base)
