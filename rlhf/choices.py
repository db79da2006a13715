"""The values whose valid choices a library owns, checked before any weights load: the learning-rate
scheduler, the optimizer and the attention kernel (transformers' own lists), a method's loss type (its trainer's
config), and LoRA's target modules (the model's module names, from its config on the meta device).

The lists are read from the installed libraries, never copied. This runs after `validate` (it imports
transformers) and, like it, reports every problem at once.
"""

from __future__ import annotations

from omegaconf import DictConfig

from rlhf import methods, models
from rlhf.errors import Problems


def schedulers() -> list[str]:
    from transformers.trainer_utils import SchedulerType

    return [s.value for s in SchedulerType]


def optimizers() -> list[str]:
    from transformers.training_args import OptimizerNames

    return [o.value for o in OptimizerNames]


def check(cfg: DictConfig) -> None:
    p = Problems()
    p.one_of("model.attn_implementation", cfg.model.attn_implementation, models.attention_kernels())
    m = cfg.method
    method = methods.get(m.name)
    p.one_of("method.lr_scheduler_type", m.lr_scheduler_type, schedulers())
    p.one_of("hardware.optim", cfg.hardware.optim, optimizers())
    own = getattr(method, "OPTIMIZERS", None)  # a method that builds its optimizer itself (our ppo loop)
    p.check(
        own is None or cfg.hardware.optim not in optimizers() or cfg.hardware.optim in own,
        "hardware.optim",
        cfg.hardware.optim,
        f"method={m.name} builds its optimizer in its own loop, which knows {', '.join(own or ())}",
        f"use one of them (hardware.optim={own[0] if own else ''})",
    )
    library_choices = getattr(method, "library_choices", None)
    for key, choices in (library_choices(m) if library_choices else {}).items():
        p.one_of(f"method.{key}", m[key], choices)
    if method.adapter_kind(m) == "lora" and m.target_modules != "all-linear":
        check_target_modules(cfg, p)
    p.raise_if_any()


def check_target_modules(cfg: DictConfig, p: Problems) -> None:
    """Every LoRA target names a module of the model (peft matches a name or its last dotted parts)."""
    names = models.module_names(cfg.model, cfg.cache_dir)
    targets = list(cfg.method.target_modules)
    unknown = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]
    linear = sorted({n.rsplit(".", 1)[-1] for n, kind in names.items() if kind == "Linear"})
    p.check(
        not unknown,
        "method.target_modules",
        targets,
        f"{', '.join(unknown)} is not a module of model={cfg.model.name}",
        f"use all-linear or names of its linear layers: {', '.join(linear)}",
    )
