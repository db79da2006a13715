"""What a training forward keeps for backward: saved activations by the line that saved them, beside the plan.

    .venv/bin/python bench/activations.py [--rows 4] [--tokens 160] [--method dpo] [overrides...]

Loads a method's model as a run does (the profile's dtype, the method's LoRA adapter in float32, adapter
inputs under autocast), runs one forward of `--rows` x `--tokens` tokens under the profile's autocast with
`torch.autograd.graph.saved_tensors_hooks` (half the rows padded by a quarter; with the profile's
`hardware.pack_rows` the decoder sees their tokens only), and sums the bytes of every tensor autograd keeps
(each storage once, the model's own parameters left out), grouped by the modeling line that saved it. The LM
head is left out (`logits_to_keep=1`): TRL's methods score it in tiles (rlhf.plan's "LM head" term). The last line is
rlhf.plan's "activations" term for the same rows and tokens, so the plan's per-token figure is checked
against what autograd holds (the plan counts every position: an upper bound where rows are packed).
"""

from __future__ import annotations

import argparse
import collections
import sys
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlhf import config, hardware, models, plan, runtime  # noqa: E402
from rlhf.methods._common import lora_config  # noqa: E402
from rlhf.models.lean import make_lean  # noqa: E402


def where(stack: list[traceback.FrameSummary]) -> str:
    """The innermost frame of a modeling library (transformers, peft), not torch's own."""
    for f in reversed(stack):
        inside = f.filename.split("site-packages/")[-1]
        if "site-packages/" in f.filename and not inside.startswith("torch/"):
            return f"{inside}:{f.lineno} {(f.line or '').strip()[:70]}"
    return "?"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=4, help="sequences in the forward (dpo: 2 pairs = 4)")
    parser.add_argument("--tokens", type=int, default=160, help="tokens per sequence")
    parser.add_argument("--method", default="dpo")
    parser.add_argument("overrides", nargs="*")
    a = parser.parse_args()
    runtime.startup()
    torch.manual_seed(0)

    cfg = config.compose(["hardware=cpu", f"method={a.method}", *a.overrides])
    hw = hardware.resolve(cfg.hardware)
    model, _ = models.load(cfg.model, hw, cfg.cache_dir)
    from peft import get_peft_model

    model = get_peft_model(model, lora_config(cfg.method))
    models.upcast_trainable(model)
    models.adapter_inputs_follow_autocast(model)
    if hw.lean_layers:  # as fit: the MLPs and norms keep less (rlhf.models.lean)
        make_lean(model)
    if hw.pack_rows:  # as rlhf.methods._common.fit: the decoder runs on the batch's tokens only
        models.pack_padded_rows(model)
    model.train()

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    total: collections.Counter = collections.Counter()
    shapes: dict = collections.defaultdict(collections.Counter)

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr in params or ptr in seen:
            return t
        seen.add(ptr)
        key = (where(traceback.extract_stack()[:-1]), str(t.dtype).replace("torch.", ""))
        total[key] += t.untyped_storage().nbytes()
        shapes[key][tuple(t.shape)] += 1
        return t

    ids = torch.randint(100, model.config.vocab_size - 100, (a.rows, a.tokens))
    mask = torch.ones_like(ids)
    mask[a.rows // 2 :, (3 * a.tokens) // 4 :] = 0  # padded rows, as a batch of uneven pairs has
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(hw.precision)
    saving = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    autocast = torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None)
    with saving, autocast:
        model.get_base_model()(input_ids=ids, attention_mask=mask, logits_to_keep=1)

    tokens = a.rows * a.tokens  # positions of the padded batch
    layers = model.config.num_hidden_layers
    saved = sum(total.values())
    print(
        f"{cfg.model.name}, method={a.method}, {a.rows} rows x {a.tokens} positions ({int(mask.sum())} tokens, "
        f"the rest padding), autocast {dtype}, hardware.pack_rows={hw.pack_rows}"
    )
    print(f"{'MB':>8} {'share':>6} {'dtype':<9} {'KiB/pos./layer':>15}  saved by (shapes: count)")
    for (line, dt), n in total.most_common(12):
        per = n / tokens / layers / 1024
        top = ", ".join(f"{s}: {c}" for s, c in shapes[(line, dt)].most_common(3))
        print(f"{n / 2**20:>8.1f} {n / saved:>6.1%} {dt:<9} {per:>15.2f}  {line}\n{'':>43}({top})")
    print(
        f"{saved / 2**20:>8.1f} MB saved in all: {saved / tokens / 1024:.0f} KiB per position of the batch, "
        f"{saved / tokens / layers / 1024:.1f} per position per layer ({saved / int(mask.sum()) / 1024:.0f} KiB "
        "per token)"
    )
    est = plan.estimate(cfg, hw, engine="none", num_processes=1, tokens=a.tokens)
    rows = plan.workload(cfg, hw, a.tokens).rows
    estimate = next(t.bytes for t in est.terms if t.name == "activations") * a.rows / rows
    print(
        f"{estimate / 2**20:>8.1f} MB rlhf.plan's activations term for the same rows and tokens "
        f"({estimate / saved:.2f}x what autograd holds)"
    )


if __name__ == "__main__":
    main()
