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


# hardware.optim values whose optimizer is in a library rlhf does not install, by name prefix: (its import
# name, what to install). Without it transformers raises at the trainer's first step, after the weights load.
OPTIMIZER_LIBRARIES = {
    "galore_": ("galore_torch", "pip install galore-torch"),
    "apollo_": ("apollo_torch", "pip install apollo-torch"),
    "lomo": ("lomo_optim", "pip install lomo-optim"),
    "adalomo": ("lomo_optim", "pip install lomo-optim"),
    "schedule_free_": ("schedulefree", "pip install schedulefree"),
    "grokadamw": ("grokadamw", "pip install grokadamw"),
    "stable_adamw": ("optimi", "pip install torch-optimi"),
    "adamw_torch_4bit": ("torchao", "pip install torchao"),
    "adamw_torch_8bit": ("torchao", "pip install torchao"),
    "adamw_anyprecision": ("torchdistx", "install torchdistx"),
    "adamw_torch_xla": ("torch_xla", "install torch_xla (TPUs)"),
    "adamw_torch_npu_fused": ("torch_npu", "install torch_npu (Ascend NPUs)"),
    "adamw_apex_fused": ("apex", "install NVIDIA apex"),
}


def optimizer_library(optim: str) -> tuple[str, str] | None:
    """(import name, how to install it) of the library `optim` needs where it is not installed, else None."""
    import importlib.util

    for prefix, (module, install) in OPTIMIZER_LIBRARIES.items():
        if optim.startswith(prefix) and importlib.util.find_spec(module) is None:
            return module, install
    return None


def check(cfg: DictConfig) -> None:
    p = Problems()
    p.one_of("model.attn_implementation", cfg.model.attn_implementation, models.attention_kernels())
    m = cfg.method
    method = methods.get(m.name)
    p.one_of("method.lr_scheduler_type", m.lr_scheduler_type, schedulers())
    if m.lr_scheduler_type in schedulers():
        check_scheduler(m.lr_scheduler_type, dict(m.lr_scheduler_kwargs), p)
    p.one_of("hardware.optim", cfg.hardware.optim, optimizers())
    missing = optimizer_library(cfg.hardware.optim)
    p.check(
        missing is None,
        "hardware.optim",
        cfg.hardware.optim,
        f"this optimizer is in {missing[0] if missing else ''}, which is not installed",
        f"{missing[1] if missing else ''}, or use hardware.optim=adamw_torch_fused",
    )
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


def check_scheduler(name: str, kwargs: dict, p: Problems) -> None:
    """The schedule built as the trainer will build it, on a stand-in optimizer: settings it requires
    (cosine_with_min_lr's min_lr or min_lr_rate, warmup_stable_decay's num_decay_steps) or does not know end
    there, in the library's words, rather than at the trainer's first step."""
    import inspect

    import torch
    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION, get_scheduler
    from transformers.trainer_utils import SchedulerType

    stand_in = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    try:
        get_scheduler(
            name, stand_in, num_warmup_steps=0, num_training_steps=10, scheduler_specific_kwargs=kwargs
        )
    except (TypeError, ValueError) as e:
        known = inspect.signature(TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(name)]).parameters
        standard = ("optimizer", "num_warmup_steps", "num_training_steps", "last_epoch", "kwargs")
        settings = [k for k in known if k not in standard]
        message = str(e).splitlines()[0]
        named = [k for k in settings if k in message] or settings  # the one the library asks for, if it says
        p.check(
            False,
            "method.lr_scheduler_kwargs",
            kwargs,
            f"method.lr_scheduler_type={name} rejects them: {message}",
            f"give its settings ({', '.join(settings)}), each as +method.lr_scheduler_kwargs.{named[0]}=..."
            if settings
            else "drop them",
        )


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
