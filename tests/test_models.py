"""Model loading: the tiny model is cached once; saved models reload with transformers / peft as they are."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

from rlhf import hardware, models, plan
from tests.conftest import ROOT, largest_tensor, positions_through, sdpa_calls


def test_tiny_model_is_built_once_and_reused(make_cfg):
    cfg = make_cfg("model=tiny")
    first = models.local_dir(cfg.model, models.Path(cfg.cache_dir))
    stamp = (models.Path(first) / "model.safetensors").stat().st_mtime_ns
    second = models.local_dir(cfg.model, models.Path(cfg.cache_dir))
    assert first == second and (models.Path(second) / "model.safetensors").stat().st_mtime_ns == stamp


def test_tiny_model_uses_the_committed_tokenizer_and_chat_template(tiny, make_cfg):
    model, tokenizer = tiny()
    assert model.config.vocab_size == len(tokenizer) == 2048
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert model.device.type == "cpu"
    # the cpu profile: a frozen base (LoRA, the default) in bf16 where the CPU computes bf16; full fine-tuning
    # keeps float32 master weights
    bf16 = hardware.resolve(make_cfg("hardware=cpu").hardware).precision == "bf16"
    assert model.dtype == (torch.bfloat16 if bf16 else torch.float32)
    assert tiny("method=sft")[0].dtype == torch.float32
    assert tiny("method=ppo")[0].dtype == (torch.bfloat16 if bf16 else torch.float32)  # a frozen base too


def test_full_model_saves_and_reloads_with_the_same_logits(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tokenizer = tiny()
    models.save(model, tokenizer, tmp_path / "model")
    assert (tmp_path / "model" / "model.safetensors").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(model(ids).logits, reloaded(ids).logits)


def test_lora_adapter_reloads_with_autopeft_and_the_same_logits(tiny, tmp_path):
    from peft import AutoPeftModelForCausalLM, LoraConfig, get_peft_model

    model, tokenizer = tiny("hardware.model_dtype=float32")  # AutoPeftModel reloads the base in float32
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():  # a non-zero adapter, so the comparison covers it
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    models.save(peft_model, tokenizer, tmp_path / "model")
    assert (tmp_path / "model" / "adapter_model.safetensors").is_file()
    reloaded = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "model")
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(peft_model(ids).logits, reloaded(ids).logits)


def test_a_virtual_token_adapter_reloads_as_trained_with_its_tokens_trainable(tiny, make_cfg, tmp_path):
    """load_trained (the run's end under FSDP or ZeRO-3, and `rlhf.evaluate run=`) of prompt tuning's adapter:
    peft refuses to load virtual tokens as trainable, so they load frozen and are counted as trained after."""
    from peft import PromptTuningConfig, get_peft_model

    model, tokenizer = tiny()
    tuned = get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5))
    with torch.no_grad():
        tuned.prompt_encoder["default"].embedding.weight.normal_()
    models.save(tuned, tokenizer, tmp_path / "model")
    cfg = make_cfg("model=tiny", "hardware=cpu")
    hw = hardware.resolve(cfg.hardware)
    reloaded = models.load_trained(tmp_path / "model", cfg.model, hw, cfg.cache_dir)
    assert models.trainable_parameters(reloaded) == models.trainable_parameters(tuned)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(tuned(ids).logits, reloaded(ids).logits)


SHARDED_PROMPT = """
import sys
import pytest
import torch
import torch.distributed as dist

dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
from peft import PromptTuningConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch.distributed.fsdp import fully_shard
from transformers import LlamaConfig, LlamaForCausalLM

from rlhf.models.partitioned import virtual_tokens_sharded

config = LlamaConfig(
    vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
    num_key_value_heads=2,
)
tuned = get_peft_model(LlamaForCausalLM(config), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
virtual_tokens_sharded(tuned)
fully_shard(tuned)
weight = tuned.prompt_encoder["default"].embedding.weight
saved = get_peft_model_state_dict(tuned)["prompt_embeddings"]
assert type(saved) is torch.Tensor and torch.equal(saved, weight.full_tensor()), "saved"
new = torch.randn_like(saved)
set_peft_model_state_dict(tuned, {"prompt_embeddings": new})
assert torch.equal(tuned.prompt_encoder["default"].embedding.weight.full_tensor(), new), "loaded"
print("saved and loaded")
"""


def test_virtual_tokens_save_and_load_where_fsdp_shards_them(tmp_path):
    """peft's own save and load of prompt tuning's tokens on a model FSDP2 shards (one gloo process, in a
    process of its own): peft runs the prompt encoder on the shards (torch: "got mixed torch.Tensor and
    DTensor") unless rlhf.models.partitioned.virtual_tokens_sharded takes them whole; the whole tokens load
    into the shards."""
    out = subprocess.run(
        [sys.executable, "-c", SHARDED_PROMPT, str(tmp_path / "group")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0 and "saved and loaded" in out.stdout, out.stderr[-3000:]


def _loss_and_grads(model, ids, autocast: bool):
    """One training forward and backward (the model in train mode); the loss, each trainable parameter's
    gradient, and the bytes of the distinct tensors autograd kept for backward."""
    kept: dict[int, int] = {}

    def pack(t):
        kept[t.data_ptr()] = t.numel() * t.element_size()
        return t

    model.train()
    with (
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
    ):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, sum(kept.values())


def _same_loss_and_grads(a, b, ids, autocast: bool) -> tuple[int, int]:
    """Assert that models a and b give the same loss and gradients, bit for bit; the bytes each kept."""
    loss_a, grads_a, kept_a = _loss_and_grads(a, ids, autocast)
    loss_b, grads_b, kept_b = _loss_and_grads(b, ids, autocast)
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name, grad in grads_a.items():
        assert torch.equal(grad, grads_b[name]), name
    return kept_a, kept_b


def _adapted(model, task_type: str = "CAUSAL_LM"):
    """`model` with LoRA r=4 on every linear layer, no dropout, and lora_B drawn at random (not peft's zeros),
    so that the adapter changes what the model computes."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=4, lora_dropout=0.0, target_modules="all-linear", task_type=task_type)
    adapted = get_peft_model(model, lora)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    return adapted


def _lora_pair(base):
    """Two copies of the cpu profile's LoRA on `base`: the adapter in float32, its layers taking autocast's
    inputs (each copy hooked after copying: a copied hook would switch the first model's layers)."""
    import copy

    first = _adapted(base)
    models.upcast_trainable(first)
    second = copy.deepcopy(first)
    models.adapter_inputs_follow_autocast(first), models.adapter_inputs_follow_autocast(second)
    return first, second


def _right_padded(lengths: list[int], vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of rows of these lengths, padded on the right with id 0."""
    mask = (torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]).long()
    return torch.randint(5, vocab_size, mask.shape).masked_fill(mask == 0, 0), mask


def test_adapter_layers_keep_no_copy_of_their_input_under_autocast(tiny):
    import copy

    # a frozen bf16 base, as the cpu profile loads it where the CPU computes bf16
    model, _ = tiny("hardware.model_dtype=bfloat16")
    plain = _adapted(model)
    models.upcast_trainable(plain)  # the adapter in float32: peft copies every adapted layer's input to it
    hooked = copy.deepcopy(plain)
    assert models.adapter_inputs_follow_autocast(hooked) == 7 * model.config.num_hidden_layers

    ids = torch.randint(5, model.config.vocab_size, (2, 24))
    saved_plain, saved_hooked = (_loss_and_grads(m, ids, autocast=True)[2] for m in (plain, hooked))
    # without the hook q, k, v, o, gate and up each keep a bf16 copy of their float32 copy of the input; with
    # it q, k, v share the attention input, gate and up the MLP's, o its own: 3 fewer per decoder layer
    fewer = 3 * model.config.hidden_size * ids.numel() * 2 * model.config.num_hidden_layers
    assert saved_plain - saved_hooked >= fewer
    for (name, a), (_, b) in zip(plain.named_parameters(), hooked.named_parameters(), strict=True):
        if a.requires_grad:  # the same bf16 matmuls: the same gradients, bit for bit
            assert torch.equal(a.grad, b.grad), name

    # outside autocast (sampling on the bf16 base) the layers cast again: no dtype mismatch, the same logits
    with torch.no_grad():
        torch.testing.assert_close(hooked(input_ids=ids).logits, plain(input_ids=ids).logits, rtol=0, atol=0)


def test_trainable_parameter_count(tiny):
    model, _ = tiny()
    trainable, total = models.trainable_parameters(model)
    assert trainable == total == sum(p.numel() for p in model.parameters())


def test_prepare_caches_what_the_run_computes_about_its_base(make_cfg, rlhf_cli, tmp_path):
    """`python -m rlhf.models` (make setup), in-process: the model, its base scores and its base sample
    generations land where a run with the same settings reads them; bad input: one line."""
    from rlhf import cli
    from rlhf.models import __main__ as command
    from tests.conftest import in_process

    env = {"RLHF_CACHE_DIR": str(tmp_path)}

    def prepare(*args: str):
        return in_process(lambda argv: cli.run(command.prepare, argv), list(args), env)

    settings = ["model=tiny", "hardware=cpu", "eval.tasks=[rlhf_general_mc]", "eval.limit=2"]
    done = prepare(*settings)
    assert done.returncode == 0, done.stderr
    ready = models.Path(re.search(r"ready in (\S+)", done.stdout).group(1))
    stamp = (ready / "model.safetensors").stat().st_mtime_ns
    assert models.local_dir(make_cfg("model=tiny").model, tmp_path) == str(ready)  # found, not rebuilt
    assert (ready / "model.safetensors").stat().st_mtime_ns == stamp
    # the run reads the cached samples (marked here) and the cached scores instead of computing them
    (cached_samples,) = (tmp_path / "samples").glob("tiny-*.json")
    marked = [f"cached {i}" for i, _ in enumerate(json.loads(cached_samples.read_text()))]
    cached_samples.write_text(json.dumps(marked))
    run_dir = tmp_path / "run"
    out = rlhf_cli(*settings, "method.max_steps=1", "logger=none", f"hydra.run.dir={run_dir}", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((run_dir / "eval.json").read_text())["base_from_cache"] is True
    rows = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert [r["completion"] for r in rows if r["stage"] == "before"] == marked
    bad = prepare("model=nope")
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr


def test_generating_from_a_frozen_model_never_expands_the_lm_head_per_row(tiny):
    """The prefill scores the last position only (a strided slice); without a contiguous head input, torch's
    matmul by a frozen weight expands the weight per row (batch x vocabulary x hidden elements)."""
    model, tokenizer = tiny()
    model.requires_grad_(False).eval()  # a frozen base, as the eval stage and rollouts have it
    head = model.get_output_embeddings().weight
    rows, prompt = 8, torch.randint(5, 100, (8, 12))

    def largest_in_generate() -> int:
        with torch.no_grad(), largest_tensor() as seen:
            model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=2,
                           do_sample=False, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        return seen.numel

    expanded = rows * head.numel()
    assert largest_in_generate() < expanded / 4
    for hook in list(model.get_output_embeddings()._forward_pre_hooks):  # the same model without the fix
        model.get_output_embeddings()._forward_pre_hooks.pop(hook)
    assert largest_in_generate() >= expanded, (
        "torch no longer expands the weight: the hook may be unnecessary"
    )


def test_the_attention_kernel_is_the_configured_one_and_scores_the_same(tiny):
    """model.attn_implementation reaches transformers: an eager model runs eager attention (no SDPA call)
    and scores a left-padded batch as the default SDPA model does."""
    sdpa, tokenizer = tiny("hardware.model_dtype=float32")
    eager, _ = tiny("hardware.model_dtype=float32", "model.attn_implementation=eager")
    assert (sdpa.config._attn_implementation, eager.config._attn_implementation) == ("sdpa", "eager")
    tokenizer.padding_side = "left"
    batch = tokenizer(
        ["a short one", "and a rather longer second prompt here"], return_tensors="pt", padding=True
    )
    with torch.no_grad(), sdpa_calls() as calls:
        eager_logits = eager(**batch).logits
        assert not calls  # eager attention never goes through SDPA
        sdpa_logits = sdpa(**batch).logits
        assert calls  # and the default does
    keep = batch["attention_mask"].bool()
    assert torch.allclose(eager_logits[keep], sdpa_logits[keep], atol=1e-5)


def test_packed_rows_score_a_padded_batch_as_padded_and_compute_only_its_tokens(tiny):
    import copy

    model, _ = tiny("hardware.precision=fp32")  # float32: packed and padded must agree to rounding
    padded = _adapted(model)
    packed = copy.deepcopy(padded)
    assert models.pack_padded_rows(packed)
    seen = positions_through(packed.get_base_model().model.layers[0])

    lengths = [24, 9, 17, 3]  # right-padded rows of a preference batch
    ids, mask = _right_padded(lengths, model.config.vocab_size)
    logits = {}
    for name, m in (("padded", padded), ("packed", packed)):
        m.train()
        out = m(input_ids=ids, attention_mask=mask, use_cache=False).logits
        (out.log_softmax(-1)[..., 7] * mask).sum().backward()
        logits[name] = out[mask.bool()]
    assert seen == [sum(lengths)]  # one row of the 53 tokens, not 4 x 24 positions
    torch.testing.assert_close(logits["packed"], logits["padded"], rtol=1e-5, atol=1e-5)
    for (name, a), (_, b) in zip(padded.named_parameters(), packed.named_parameters(), strict=True):
        if a.requires_grad:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)

    # what it leaves as it came: eval mode, left padding, a full batch, generation with its cache
    packed.eval()
    with torch.no_grad():
        packed(input_ids=ids, attention_mask=mask)
        packed.train()
        packed(input_ids=ids, attention_mask=mask.flip(1))
        packed(input_ids=ids, attention_mask=torch.ones_like(mask))
        packed.generate(input_ids=ids[:2, :3], attention_mask=torch.ones_like(ids[:2, :3]), max_new_tokens=2)
    assert seen[1:4] == [ids.numel()] * 3 and seen[4] == 2 * 3  # the prefill of the 2 prompts, padded


def test_packed_rows_keep_one_attention_mask_for_every_layer(tiny):
    """sdpa makes a float copy of a bool mask in each layer and keeps it for backward; the packed rows' own
    float mask is one tensor every layer keeps, and the decoder computes what transformers' packed mask gives."""
    base, _ = tiny("hardware.model_dtype=bfloat16")  # the cpu profile's LoRA under bf16 autocast
    own, packed = _lora_pair(base)
    assert models.pack_padded_rows(packed)
    ids, mask = _right_padded([24, 9, 17, 3], base.config.vocab_size)
    keep = mask.bool()
    positions = (keep.cumsum(1) - 1)[keep]
    tokens = int(keep.sum())
    weights = torch.randn(tokens, base.config.hidden_size)
    masks, grads = {}, {}
    for name, m, kwargs in (
        # transformers' packed sequences: position ids that restart, no mask, no cache
        ("own", own, {"input_ids": ids[keep][None], "position_ids": positions[None], "use_cache": False}),
        ("packed", packed, {"input_ids": ids, "attention_mask": mask}),
    ):
        kept = {}

        def pack(t, kept=kept):
            if t.dim() == 4 and t.shape[-2:] == (tokens, tokens):
                kept[t.untyped_storage().data_ptr()] = t
            return t

        m.train()
        with (
            torch.autocast("cpu", dtype=torch.bfloat16),
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        ):
            hidden = m.get_base_model().model(**kwargs).last_hidden_state
        hidden = hidden[0] if name == "own" else hidden[keep]
        (hidden.float() * weights).sum().backward()
        masks[name], grads[name] = (
            list(kept.values()),
            {n: p.grad for n, p in m.named_parameters() if p.grad is not None},
        )
        if name == "own":
            first = hidden.detach()
    assert len(masks["own"]) == base.config.num_hidden_layers and len(masks["packed"]) == 1
    assert masks["packed"][0].dtype == torch.bfloat16
    assert torch.equal(hidden.detach(), first)
    assert grads["own"].keys() == grads["packed"].keys() and grads["own"]
    for name, grad in grads["own"].items():
        assert torch.equal(grad, grads["packed"][name]), name


def test_packed_rows_give_a_reward_model_the_same_scores(make_cfg):
    """A sequence classifier passes its ids to the decoder positionally and pools the last real token."""
    import copy

    cfg = make_cfg("model=tiny", "hardware=cpu", "hardware.precision=fp32")
    model, _ = models.load(
        cfg.model, hardware.resolve(cfg.hardware), cfg.cache_dir, head="sequence-classification"
    )
    model.config.pad_token_id = 0
    padded = _adapted(model, "SEQ_CLS")
    packed = copy.deepcopy(padded)
    models.pack_padded_rows(packed)
    seen = positions_through(packed.get_base_model().model.layers[0])
    lengths = [5, 12, 8, 12]
    ids, mask = _right_padded(lengths, model.config.vocab_size)
    padded.train(), packed.train()
    scores = [m(input_ids=ids, attention_mask=mask).logits for m in (padded, packed)]
    assert seen == [sum(lengths)]
    torch.testing.assert_close(scores[1], scores[0], rtol=1e-5, atol=1e-5)


def test_lean_layers_keep_less_and_give_the_same_loss_and_gradients(tiny):
    import copy

    from rlhf.models.lean import make_lean

    # the cpu profile's LoRA: a bf16 base under bf16 autocast, the adapter in float32
    base, _ = tiny("hardware.model_dtype=bfloat16")
    plain, lean = _lora_pair(base)
    n, h, i = base.config.num_hidden_layers, base.config.hidden_size, base.config.intermediate_size
    assert make_lean(lean) == {"mlp": n, "norm": 2 * n + 1}
    assert make_lean(lean) == {"mlp": 0, "norm": 0}  # once only

    ids = torch.randint(5, base.config.vocab_size, (2, 24))
    kept_a, kept_b = _same_loss_and_grads(plain, lean, ids, autocast=True)
    assert sum(p.requires_grad for p in lean.parameters()) == 14 * n  # A and B of 7 linear layers each
    # per layer, the MLP no longer keeps SiLU's bf16 output (2i bytes a token) and each norm keeps its bf16
    # input (2h) instead of its float32 copy and reciprocal (4h + 4); the plan counts the same but the
    # reciprocal. (The first layer's input norm sees the embeddings, which need no gradient: it keeps nothing
    # either way, and the final norm keeps as much as a layer's.)
    assert kept_a - kept_b == ids.numel() * n * (2 * i + 2 * (2 * h + 4))
    shape = plan.shape_from(base.config)
    per_layer = [plan.layer_bytes_per_token(shape, "lora", 2, 2, lean) for lean in (False, True)]
    assert per_layer[0] - per_layer[1] == 2 * i + 2 * 2 * h

    # full fine-tuning in float32: the MLPs keep less, the norms compute as they did (nothing to save there)
    full, _ = tiny("hardware.precision=fp32")
    lean_full = copy.deepcopy(full)
    assert make_lean(lean_full) == {"mlp": n, "norm": 2 * n + 1}
    kept_a, kept_b = _same_loss_and_grads(full, lean_full, ids, autocast=False)
    assert kept_a - kept_b == ids.numel() * n * 4 * i  # SiLU's float32 output, and nothing of the norms
    per_layer = [plan.layer_bytes_per_token(shape, "full", 4, 4, lean) for lean in (False, True)]
    assert per_layer[0] - per_layer[1] == 4 * i

    # every weight in bf16 (the norms' weights train too): their gradients as well
    bf16, _ = tiny("hardware.model_dtype=bfloat16")
    bf16.requires_grad_(True)
    lean_bf16 = copy.deepcopy(bf16)
    make_lean(lean_bf16)
    assert any("norm" in name for name, p in bf16.named_parameters() if p.requires_grad)
    _same_loss_and_grads(bf16, lean_bf16, ids, autocast=False)


def test_lean_layers_leave_a_layer_whose_forward_differs_as_it_is(tiny):
    """A norm that scales by (1 + weight) as Gemma's does, and an MLP that gates the other projection, look
    like a Llama's to make_lean but compute something else: their own forward stays."""
    from rlhf.models.lean import make_lean, rms_norm

    model, _ = tiny("hardware.precision=fp32")

    class OffsetNorm(type(model.model.norm)):
        def forward(self, x):
            return rms_norm(x, 1 + self.weight, self.variance_epsilon)

    class SwappedMLP(type(model.model.layers[0].mlp)):
        def forward(self, x):
            return self.down_proj(self.act_fn(self.up_proj(x)) * self.gate_proj(x))

    norm, mlp = model.model.norm, model.model.layers[0].mlp
    norm.__class__, mlp.__class__ = OffsetNorm, SwappedMLP
    ids = torch.randint(5, model.config.vocab_size, (1, 12))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    n = model.config.num_hidden_layers
    assert make_lean(model) == {"mlp": n - 1, "norm": 2 * n}
    assert not hasattr(norm, "_lean") and not hasattr(mlp, "_lean")
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)


def test_lean_layers_apply_to_a_4bit_base_with_the_same_gradients(tiny):
    """QLoRA: the MLPs' projections hold 4-bit weights stored as integers; the probe takes a float dtype."""
    from rlhf.models.lean import make_lean

    base, _ = tiny("hardware.load_in_4bit=true", "hardware.quantize_min_params_b=0")
    assert type(base.model.layers[0].mlp.gate_proj).__name__ == "Linear4bit"
    plain, lean = _lora_pair(base)
    n = base.config.num_hidden_layers
    assert make_lean(lean) == {"mlp": n, "norm": 2 * n + 1}
    ids = torch.randint(5, base.config.vocab_size, (2, 24))
    kept_a, kept_b = _same_loss_and_grads(plain, lean, ids, autocast=True)
    assert kept_b < kept_a


# --------------------------------------------------------------------------- hardware.optimizer_in_backward


def sft_run(make_cfg, tiny, run_dir, *overrides, steps=6):
    """method=sft on the tiny model without clipping: (its logged rows, the trained weights, peak gradients)."""
    from rlhf import data
    from rlhf.methods import sft
    from tests.conftest import Rows, make_inputs

    cfg = make_cfg(
        "model=tiny",
        "hardware=cpu",
        "method=sft",
        f"method.max_steps={steps}",
        "method.learning_rate=3e-3",
        "method.max_grad_norm=0",
        "hardware.sft_batch_size=2",
        *overrides,
    )
    model, tokenizer = tiny()
    weights = list(model.parameters())
    held: list[int] = []  # the gradient elements alive as each weight's gradient is whole, in every backward

    def count(_):
        held.append(sum(q.grad.numel() for q in weights if q.grad is not None))

    for p in weights:
        p.register_post_accumulate_grad_hook(count)
    rows = data.load(cfg.data, sft.DATA_FORMATS, "sft").rows[:24]
    metrics = Rows()
    result = sft.train(make_inputs(cfg, model, tokenizer, rows, run_dir, metrics=metrics))
    trained = {n: p.detach().clone() for n, p in result.model.named_parameters()}
    return [r for r in metrics.rows if "loss" in r], trained, max(held)


def test_optimizer_in_backward_trains_as_the_usual_step_holding_one_gradient_at_a_time(
    make_cfg, tiny, tmp_path
):
    """The same losses, gradient norms and weights as the optimizer stepped after backward, with at most one
    weight's gradient alive instead of all of them."""
    usual, usual_weights, usual_held = sft_run(make_cfg, tiny, tmp_path / "usual")
    fused, fused_weights, fused_held = sft_run(
        make_cfg, tiny, tmp_path / "fused", "hardware.optimizer_in_backward=true"
    )
    assert [r["loss"] for r in fused] == [r["loss"] for r in usual]
    assert [r["grad_norm"] for r in fused] == pytest.approx([r["grad_norm"] for r in usual], rel=1e-5)
    assert all(r["grad_norm"] > 0 for r in fused)
    for name, weight in usual_weights.items():
        torch.testing.assert_close(fused_weights[name], weight, rtol=0, atol=0, msg=name)
    total = sum(w.numel() for w in usual_weights.values())
    largest = max(w.numel() for w in usual_weights.values())
    assert usual_held == total  # the usual step: every gradient alive at the end of backward
    assert (
        fused_held == largest < total
    )  # in backward: one weight's gradient, the others freed or yet to come


def test_the_low_memory_sft_preset_steps_adafactor_in_backward(rlhf_cli, tmp_path):
    """experiment=sft-low-memory validates and trains (gradient checkpointing too): its checkpoint holds
    Adafactor's factored moments (a row and a column per matrix, not AdamW's two full ones), and the logged
    gradient norm is the hooks' (above 0: the trainer's own sees no gradient left)."""
    run_dir = tmp_path / "run"
    out = rlhf_cli(
        "experiment=sft-low-memory",
        "model=tiny",
        "eval=none",
        "logger=none",
        "method.max_steps=2",
        "checkpoint.every=1",
        f"hydra.run.dir={run_dir}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["grad_norm"] > 0 for r in rows if "loss" in r] == [True, True]
    state = torch.load(run_dir / "checkpoints" / "step-2" / "optimizer.pt", weights_only=True)["state"]
    matrices = [s for s in state.values() if "exp_avg_sq_row" in s]
    assert matrices and all("exp_avg" not in s for s in state.values())
