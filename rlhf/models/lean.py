"""Lean layers: the decoder keeps less for backward on a CPU, and computes the same numbers.

autograd keeps what each op's backward needs, and two layers of a Llama-family decoder keep more than their
gradients need (bench/activations.py, DPO on SmolLM2 under bf16 autocast):
- the gated MLP, `down_proj(act_fn(gate_proj(x)) * up_proj(x))` with SiLU, keeps the gate, its SiLU and the
  up projection. `SiluMul` keeps the gate and the up projection and computes the SiLU again in backward (one
  elementwise op): 12% of what a layer keeps.
- RMSNorm computes in float32 and keeps its float32 copy of a 16-bit input. `RMSNorm` keeps the input as it
  came and computes the float32 steps again in backward: 9% of what a layer keeps.
Both backward passes apply autograd's own formulas (derivatives.yaml) with the same ops on the same values in
the same order, so losses and gradients are the same bit for bit (tests/test_models.py), at the same speed
(a DPO forward and backward on SmolLM2: 1.00x, median of 5, alternating in one process). A module is made
lean only where its own forward gives the same output as the lean one on a probe input; anything else
(another activation, Gemma's `1 + weight` norm, a fused gate_up projection) keeps its own forward.

On GPUs, Liger's Triton kernels (TRL's `use_liger_kernel`) do this and more, but Triton does not run on a
CPU: the cpu profile turns these on (`hardware.lean_layers`).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F


class SiluMul(torch.autograd.Function):
    """silu(gate) * up, keeping gate and up only."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gate, up = ctx.saved_tensors
        # as autograd's MulBackward0 then SiluBackward0 compute them
        d_gate = torch.ops.aten.silu_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
        d_up = grad * F.silu(gate) if ctx.needs_input_grad[1] else None
        return d_gate, d_up


def _float32_steps(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x in float32 and the reciprocal of its root mean square, as LlamaRMSNorm computes them."""
    h = x.to(torch.float32)
    return h, torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm, step for step: in float32, back to the input's dtype, then the weight."""
    h, r = _float32_steps(x, eps)
    return weight * (h * r).to(x.dtype)


class RMSNorm(torch.autograd.Function):
    """rms_norm, keeping its input as it came (not its float32 copy) and the weight."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.eps = eps
        return rms_norm(x, weight, eps)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[:2]
        # the forward's float32 steps again, then the backward formulas autograd applies to them
        # (torch/csrc/autograd/FunctionsManual.cpp, derivatives.yaml), op for op, in reverse
        h, r = _float32_steps(x, ctx.eps)
        normed = (h * r).to(x.dtype)
        d_weight = (grad * normed).sum_to_size(weight.shape) if need_w else None  # MulBackward0, other
        if not need_x:
            return None, d_weight, None
        d_normed = (grad * weight).to(torch.float32)  # MulBackward0, then ToCopyBackward0
        d_r = (d_normed * h).sum_to_size(r.shape)  # MulBackward0 (h * r): r's share
        d_sum = -0.5 * d_r * r.pow(3)  # RsqrtBackward0 (AddBackward0 passes it on)
        d_square = d_sum.expand(h.shape) / h.shape[-1]  # MeanBackward1
        d_h = d_normed * r + d_square * (2.0 * h)  # MulBackward0's h share + PowBackward0
        return d_h.to(x.dtype), d_weight, None


def _mlp_forward(self, x):
    gate, up = self.gate_proj(x), self.up_proj(x)
    if not torch.is_grad_enabled():  # sampling, scoring: nothing is saved, so no autograd.Function to call
        return self.down_proj(F.silu(gate) * up)
    return self.down_proj(SiluMul.apply(gate, up))


def _norm_forward(self, hidden_states):
    # without grad nothing is saved; in float32 its float32 copy is the input itself
    if not torch.is_grad_enabled() or hidden_states.dtype == torch.float32:
        return rms_norm(hidden_states, self.weight, self.variance_epsilon)
    return RMSNorm.apply(hidden_states, self.weight, self.variance_epsilon)


def _is_silu(module) -> bool:
    return isinstance(module, torch.nn.SiLU) or type(module).__name__ == "SiLUActivation"


def _candidates(model):
    """(module, lean forward, probe width) for each gated SiLU MLP and RMSNorm-shaped module."""
    for module in model.modules():
        if all(hasattr(module, a) for a in ("gate_proj", "up_proj", "down_proj")) and _is_silu(
            getattr(module, "act_fn", None)
        ):
            yield module, _mlp_forward, module.gate_proj.in_features
        weight = getattr(module, "weight", None)
        if isinstance(getattr(module, "variance_epsilon", None), float) and (
            isinstance(weight, torch.nn.Parameter) and weight.dim() == 1
        ):
            yield module, _norm_forward, weight.numel()


@torch.no_grad()
def _same_output(module, forward, width: int) -> bool:
    """Whether the lean forward gives exactly the module's own output on a probe input (in eval mode: no
    dropout), in the dtype of the module's first floating-point parameter (4-bit weights are stored as
    integers)."""
    param = next((p for p in module.parameters() if p.is_floating_point()), None)
    if param is None:
        return False
    probe = torch.randn(1, 3, width, generator=torch.Generator().manual_seed(0)).to(param.device, param.dtype)
    training = module.training
    module.eval()
    try:
        own, lean = module(probe), forward(module, probe)
    except Exception:  # a forward that needs more than a hidden state (or weights it does not hold here)
        return False
    finally:
        module.train(training)
    return torch.is_tensor(own) and own.shape == lean.shape and bool(torch.equal(own, lean))


def make_lean(model) -> dict[str, int]:
    """Give each gated SiLU MLP and each RMSNorm of `model` its lean forward, where it gives the module's own
    output; the number of modules made lean, by kind ("mlp", "norm"). Weights that are not all here (a
    partitioned model) are left alone."""
    from rlhf.models.partitioned import is_partitioned

    made = {"mlp": 0, "norm": 0}
    if is_partitioned(model):
        return made
    for module, forward, width in list(_candidates(model)):
        if getattr(module, "_lean", False) or not _same_output(module, forward, width):
            continue
        module.forward = types.MethodType(forward, module)
        module._lean = True
        made["mlp" if forward is _mlp_forward else "norm"] += 1
    return made
