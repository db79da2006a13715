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
unscale fp16 gradients, wait for another process's gradients (one process, no engine), or run an optimizer
whose step keeps counts of its own (schedule-free ones count steps per group). The gradient norm is still
logged: the hooks add up each gradient's squares before its update.
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
        self.squares = torch.zeros((), dtype=torch.float64)  # this step's gradients, squared and summed
        self.handles = [
            p.register_post_accumulate_grad_hook(self._update)
            for group in inner.param_groups
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
        norm = torch.linalg.vector_norm(p.grad.detach(), dtype=torch.float32)  # a reduction: no copy of it
        self.squares += norm.double() ** 2
        self.inner.step()  # only p has a gradient now: the ones before it were freed, the rest are to come
        p.grad = None

    def step(self, closure: Any = None) -> None:
        """Done in backward."""
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Every gradient was freed after its update."""

    def grad_norm(self) -> float:
        """The norm of the gradients of the last backward (before their updates); starts the next step's sum."""
        norm = float(self.squares.sqrt())
        self.squares.zero_()
        return norm

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

    trainer.create_optimizer = create_optimizer
    trainer._get_grad_norm = get_grad_norm
    return remove
