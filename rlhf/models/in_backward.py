"""hardware.optimizer_in_backward: each weight is updated in backward, as soon as its gradient is whole, and
the gradient is freed there (torch's post-accumulate-grad hooks; torchtune's `optimizer_in_bwd`).

A step then never holds every gradient at once: full fine-tuning's gradients (as large as the trained weights)
shrink to the largest single one, ~0.5 GB less for the embedded model in float32. The update itself is the
trainer's own optimizer, run on one weight at a time (its step skips every weight without a gradient): where
the update of a weight reads that weight's gradient and state only (AdamW, Adafactor, SGD, Lion, bitsandbytes'
8-bit states: rlhf.validate.PER_WEIGHT), the weights, the optimizer state, the checkpoint and its resume are
those of the usual step without clipping.

What a step can no longer do, and `rlhf.validate` refuses in one line: clip by the norm of all gradients
(method.max_grad_norm must be 0), accumulate gradients over micro-batches (the profile's grad_accum must be 1),
unscale fp16 gradients, wait for another process's gradients (DDP and DeepSpeed average them after the hooks
run), or run an optimizer whose step keeps counts of its own (schedule-free ones count steps per group). The
gradient norm is still logged: the hooks add up each gradient's squares before its update.

Under FSDP2 (distributed=fsdp) the hooks run on each process's shard of a weight, once FSDP has reduced that
layer's gradients across the processes (torch calls a sharded parameter's post-accumulate-grad hooks right
after its reduce-scatter; torchtune's distributed full fine-tuning runs its optimizer in backward this way).
Each process updates its own shard, as its optimizer would after backward, and the squares of the shards are
summed over the processes for the logged norm.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class InBackward(torch.optim.Optimizer):
    """The trainer's optimizer, stepped one weight at a time from backward hooks; `step` and `zero_grad` are
    then no-ops. Its param groups and state are the wrapped optimizer's (the scheduler sets their learning
    rate), and so is its state dict."""

    def __init__(self, inner: torch.optim.Optimizer):
        # torch.optim.Optimizer.__init__ would build groups and state of its own: share the inner's instead
        self.inner = inner
        self.defaults = inner.defaults
        self._optimizer_step_pre_hooks = {}
        self._optimizer_step_post_hooks = {}
        self._optimizer_state_dict_pre_hooks = {}
        self._optimizer_state_dict_post_hooks = {}
        self._optimizer_load_state_dict_pre_hooks = {}
        self._optimizer_load_state_dict_post_hooks = {}
        self.squares: torch.Tensor | None = None  # this step's gradients, squared and summed (their device)
        self.sharded = False  # FSDP's shards: each process summed its own
        self.handles: list[Any] = []
        self.hook()

    def hook(self) -> None:
        """Hook the weights the inner optimizer holds now: under FSDP2 accelerate's prepare swaps them for the
        sharded ones after the optimizer is built (install hooks them again when training begins)."""
        self.remove()
        self.handles = [
            p.register_post_accumulate_grad_hook(self._update)
            for group in self.inner.param_groups
            for p in group["params"]
            if p.requires_grad
        ]

    # the inner's own, read each time: its load_state_dict (a resume; accelerate's prepare) makes new ones
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.inner.param_groups

    @property
    def state(self) -> Any:
        return self.inner.state

    def _update(self, p: torch.Tensor) -> None:
        grad = p.grad.detach()
        if hasattr(grad, "to_local"):  # a DTensor: FSDP's shard of the reduced gradient
            grad, self.sharded = grad.to_local(), True
        square = torch.linalg.vector_norm(grad, dtype=torch.float32).double() ** 2  # a reduction: no copy
        self.squares = square if self.squares is None else self.squares + square
        self.inner.step()  # only p has a gradient now: the ones before it were freed, the rest are to come
        p.grad = None

    def step(self, closure: Any = None) -> None:
        """Done in backward: this steps only gradients set outside it (none in training; torch's distributed
        checkpoint sets zeros to build the state it loads into)."""
        if any(p.grad is not None for group in self.param_groups for p in group["params"]):
            self.inner.step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Every gradient of a backward was freed after its update; this clears any set outside it."""
        self.inner.zero_grad(set_to_none)

    def grad_norm(self) -> float:
        """The norm of the gradients of the last backward (before their updates), over every process's shard;
        starts the next step's sum."""
        squares, self.squares = self.squares, None
        if squares is None:
            return 0.0
        if self.sharded:
            import torch.distributed as dist

            dist.all_reduce(squares)
        return float(squares.sqrt())

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.inner.load_state_dict(state_dict)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def install(trainer: Any) -> Callable[[], None]:
    """Make a transformers Trainer build its optimizer as usual, then step it from backward (InBackward), and
    log the gradient norm its hooks measured. Returns what removes the hooks once training is over."""
    build = trainer.create_optimizer
    made: list[InBackward] = []

    def create_optimizer(model: Any = None) -> torch.optim.Optimizer:
        built = build(model)  # the trainer's optimizer: a new one, or the one it has (accelerate's wrapper)
        if made and made[-1] in (built, getattr(built, "optimizer", None)):
            return built
        made.append(InBackward(built))
        trainer.optimizer = made[-1]
        return made[-1]

    def get_grad_norm(model: Any, grad_norm: Any = None) -> float:
        return made[-1].grad_norm()

    def remove() -> None:
        for optimizer in made:
            optimizer.remove()

    from transformers import TrainerCallback

    class Rehook(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            made[-1].hook()  # the weights the prepared optimizer holds (FSDP2's shards)

    trainer.create_optimizer = create_optimizer
    trainer._get_grad_norm = get_grad_norm
    trainer.add_callback(Rehook())
    return remove
