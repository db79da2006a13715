"""Training methods: one module per `method=` option, found from the modules present in this package.

A method module (any module or package here whose name does not start with `_`) owns everything about it:

    NAME          the `method=` option (conf/method/<NAME>.yaml holds its values)
    Config        its schema dataclass (stored as schema/method/<NAME>; the YAML's defaults list pulls it in)
    DATA_FORMATS  the data formats it trains on (rlhf.data's names)
    HEAD          causal-lm, or sequence-classification (a reward model)
    USES_REWARD   whether it needs the reward group's callables
    RESULTS       the summary.json keys it reports (shown in the run's table and by rlhf.compare)
    validate(m, problems)   its own config rules (m: the method node), added to `problems`
    adapter_kind(m)         what it trains: "lora", "prompt", "prefix", or None for every weight
    train(inputs) -> Result
    library_choices(m)      optional: {key: valid values} for keys whose list a library owns (a loss type)
    check_hardware(m, hw, problems)   optional: its rules on the hardware profile (also on auto's pick)
    PACKING       optional: True where it trains on packed rows (data.packing=true)
    SIGNALS       optional: {monitor signal: the key it logs} for the monitor group's rules (rlhf.monitor)

A method's batch comes from the profile's sft_* or pref_* keys, by its data formats (`batch_keys`).

Adding a method is its module and its YAML: the schema store, validation, `--help`, the run's table and
`rlhf.compare` read this registry. The module's surface imports nothing heavy (TRL, peft and torch are
imported inside `train`): `python -m rlhf --cfg job` and `validate` never import torch.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from rlhf.checkpoint import Plan
    from rlhf.rewards import Reward
    from rlhf.schema import HardwareConfig

REQUIRED = (
    "NAME",
    "Config",
    "DATA_FORMATS",
    "HEAD",
    "USES_REWARD",
    "RESULTS",
    "validate",
    "adapter_kind",
    "train",
)


class MetricsSink(Protocol):
    """Where a method's logged values go (rlhf.metrics.MetricsFile: metrics.jsonl and the tracker)."""

    def write(self, step: int, epoch: float, values: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class RunInfo:
    dir: Path  # the run directory: trainers may put scratch files here, never model/ or reports
    seed: int


@dataclass
class Inputs:
    """What a method receives, by name: ready objects, never config paths."""

    model: Any  # a transformers PreTrainedModel on the profile's device
    tokenizer: Any
    rows: list[dict[str, Any]]  # converted by rlhf.data: TRL's conversational rows
    config: Any  # the method's config node (its Config's fields)
    hardware: HardwareConfig  # the resolved profile: precision is fp32 / bf16 / fp16, never auto
    run: RunInfo
    metrics: MetricsSink
    eval_rows: list[dict[str, Any]] = field(default_factory=list)  # held-out rows, where the method uses them
    rewards: list[Reward] = field(default_factory=list)  # reward components (methods with USES_REWARD)
    checkpoints: Plan | None = None  # when to checkpoint, the checkpoint to resume from, the stop request
    packing: bool = False  # data.packing: rows packed into max_seq_length windows (methods with PACKING)


@dataclass
class Result:
    model: Any  # the trained model (a PeftModel for adapter methods)
    metrics: dict[str, float]  # final training metrics: train_loss, train_runtime, ...
    extra: dict[str, Any] = field(default_factory=dict)  # the method's RESULTS for summary.json
    heads: dict[str, Any] = field(default_factory=dict)  # modules saved beside model/ as <name>.safetensors


@functools.cache
def registry() -> dict[str, ModuleType]:
    """NAME -> module, for every method module in this package, sorted by name."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        missing = [attr for attr in REQUIRED if not hasattr(module, attr)]
        if missing:
            raise TypeError(f"{module.__name__} is not a method module: it lacks {', '.join(missing)}")
        found[module.NAME] = module
    return dict(sorted(found.items()))


def names() -> list[str]:
    return list(registry())


def get(name: str) -> ModuleType:
    return registry()[name]


def frozen_base(m) -> bool:
    """The method node trains an adapter (or a soft prompt) on a frozen base that may load in 16 bits
    (rlhf.hardware.concrete_model_dtype); a module that measured worse that way sets BASE_16BIT = False."""
    module = get(m.name)
    return module.adapter_kind(m) is not None and getattr(module, "BASE_16BIT", True)


PREFERENCE_FORMATS = frozenset({"preference", "implicit_preference", "unpaired"})


def batch_keys(module: ModuleType) -> tuple[str, str] | None:
    """The profile keys of the method's per-device batch and gradient accumulation: the pref_* pair for the
    methods on preference rows (rm, dpo, kto), else the sft_* pair; None where the method's own keys set its
    batch (ppo, grpo and rloo, on prompts)."""
    formats = set(module.DATA_FORMATS)
    if "prompts" in formats:
        return None
    kind = "pref" if formats & PREFERENCE_FORMATS else "sft"
    return f"{kind}_batch_size", f"{kind}_grad_accum"


def result_keys() -> list[str]:
    """Every method's RESULTS, in registry order, without repeats."""
    return list(dict.fromkeys(key for module in registry().values() for key in module.RESULTS))
