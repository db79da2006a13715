"""Our PPO on the tiny model: the reference stays fixed while the policy moves, KL starts at 0 and grows,
updates follow the advantages, and a 4-bit policy trains every adapter tensor."""

from __future__ import annotations

import pytest
import torch

from rlhf import data, rewards
from rlhf.methods import ppo
from rlhf.methods._common import lora_config
from rlhf.methods.ppo import core, loop
from rlhf.metrics import MetricsFile
from tests.conftest import make_inputs, sdpa_calls

FAST = [
    "method.batch_size=8",
    "method.mini_batch_size=4",
    "method.gradient_accumulation_steps=1",
    "method.ppo_epochs=2",
]


def ppo_cfg(make_cfg, *overrides):
    return make_cfg("model=tiny", "hardware=cpu", "method=ppo", *FAST, *overrides)


def sequence_logprobs(model, tokenizer, text: str) -> torch.Tensor:
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    return torch.log_softmax(logits[0, :-1].float(), -1).gather(1, ids[0, 1:, None]).squeeze(1)


def test_reference_stays_fixed_while_the_policy_moves_and_kl_grows(make_cfg, tiny, tmp_path):
    cfg = ppo_cfg(make_cfg, "method.max_steps=6", "method.learning_rate=1e-2")
    model, tokenizer = tiny()
    probe = "<|im_start|>user\nI feel so<|im_end|>\n<|im_start|>assistant\nglad and happy"
    base_logprobs = sequence_logprobs(model, tokenizer, probe)
    log = MetricsFile(tmp_path / "metrics.jsonl")
    rows = data.load(cfg.data, ppo.DATA_FORMATS, "ppo").rows
    result = ppo.train(
        make_inputs(
            cfg,
            model,
            tokenizer,
            rows,
            tmp_path,
            log,
            rewards=rewards.build(cfg.reward),
        )
    )

    policy = result.model
    with policy.disable_adapter():
        torch.testing.assert_close(sequence_logprobs(policy, tokenizer, probe), base_logprobs)
    assert not torch.allclose(sequence_logprobs(policy, tokenizer, probe), base_logprobs, atol=1e-4)

    kls = [row["kl"] for row in log.rows]
    assert len(kls) == 6 and abs(kls[0]) < 1e-6  # the first rollout's policy is the reference exactly
    assert sum(kls[-3:]) / 3 > 0.01
    for key in (
        "reward",
        "success_rate",
        "entropy",
        "policy_loss",
        "value_loss",
        "clipfrac",
        "approx_kl",
        "response_length",
        "tokens_per_s",
        "rewards/keyword",
    ):
        assert key in log.rows[-1], key


def signed_rollout(make_cfg, tiny, *overrides):
    """A LoRA policy on the tiny model and one rollout of its own whose advantages are made by hand: even rows
    good (+1), odd rows bad (-1); learning rate 5e-3, no value loss. (policy, rollout, method config, signs)."""
    from peft import get_peft_model

    cfg = ppo_cfg(make_cfg, "method.learning_rate=5e-3", "method.vf_coef=0.0", *overrides)
    model, tokenizer = tiny()
    m = cfg.method
    torch.manual_seed(0)
    policy = loop.PolicyWithValue(get_peft_model(model, lora_config(m)))
    prompts = [[{"role": "user", "content": "I feel so"}]] * m.batch_size
    rollout = loop.make_rollout(policy, tokenizer, prompts, m, rewards.build(cfg.reward), kl_coef=0.0)
    sign = torch.tensor([1.0, -1.0] * (m.batch_size // 2))
    rollout["advantages"] = sign[:, None] * rollout["mask"]
    return policy, rollout, m, sign


def test_an_update_raises_positive_advantage_responses_and_lowers_negative_ones(make_cfg, tiny):
    from accelerate import Accelerator

    policy, rollout, m, sign = signed_rollout(make_cfg, tiny, "method.ppo_epochs=4")
    accelerator = Accelerator(cpu=True)
    optimizer = loop.make_optimizer([p for p in policy.parameters() if p.requires_grad], "adamw_torch", m)
    loop.optimise(policy, optimizer, accelerator, rollout, m)

    policy.eval()
    with torch.no_grad():
        response = rollout["response"]
        logits, _ = policy(
            rollout["input_ids"], rollout["attention_mask"], rollout["position_ids"], response.shape[1]
        )
    new = loop.response_logprobs(logits, response, m.temperature)
    change = ((new - rollout["logprobs"]) * rollout["mask"]).sum(1)
    assert (change[sign > 0] > 0).all() and (change[sign < 0] < 0).all(), change


def test_token_level_kl_is_exactly_zero_before_any_update(make_cfg, tiny):
    from peft import get_peft_model

    cfg = ppo_cfg(make_cfg)
    model, tokenizer = tiny()
    policy = loop.PolicyWithValue(get_peft_model(model, lora_config(cfg.method)))
    rollout = loop.make_rollout(
        policy,
        tokenizer,
        [[{"role": "user", "content": "I am really"}]] * 4,
        cfg.method,
        rewards.build(cfg.reward),
        0.2,
    )
    assert rollout["kl"] == 0.0
    assert core.masked_mean(rollout["advantages"], rollout["mask"]).abs() < 1e-5  # whitened


def test_4bit_policy_trains_every_adapter_tensor_after_generation(make_cfg, tiny, tmp_path):
    one_update = ["method.max_steps=1", "method.ppo_epochs=1", "method.mini_batch_size=8"]
    cfg = ppo_cfg(make_cfg, *one_update, "method.learning_rate=1e-2", "hardware.load_in_4bit=true")
    model, tokenizer = tiny("hardware.load_in_4bit=true")
    rows = data.load(cfg.data, ppo.DATA_FORMATS, "ppo").rows
    result = ppo.train(make_inputs(cfg, model, tokenizer, rows, tmp_path, rewards=rewards.build(cfg.reward)))
    # the rollout generates with the 4-bit weights before the one optimizer step; every lora_B starts at 0 and
    # moves only if gradient reached it through the frozen 4-bit layers above it
    untrained = [n for n, p in result.model.named_parameters() if "lora_B" in n and p.abs().sum() == 0]
    assert not untrained, untrained


def test_the_ppo_epochs_run_their_own_attention_kernel_and_give_the_model_back(make_cfg, tiny, tmp_path):
    """method.update_attn_implementation=eager: every forward/backward of the PPO epochs, and the policy and
    reference passes whose log-probs they are compared with, run eager attention (SDPA is never called with
    gradients on); sampling keeps the model's SDPA, and the model leaves training with its own kernel. With ""
    everything runs the model's kernel."""
    rows = [{"prompt": [{"role": "user", "content": "I feel so"}]}]
    seen = {}
    for kernel in ("eager", ""):
        cfg = ppo_cfg(make_cfg, "method.max_steps=1", f"method.update_attn_implementation={kernel!r}")
        model, tokenizer = tiny()
        inputs = make_inputs(cfg, model, tokenizer, rows, tmp_path, rewards=rewards.build(cfg.reward))
        with sdpa_calls() as calls:
            result = loop.train(inputs)
        assert result.model.config._attn_implementation == "sdpa"
        seen[kernel] = {"grad": sum(calls), "no_grad": len(calls) - sum(calls)}
    assert seen["eager"]["grad"] == 0 and seen["eager"]["no_grad"] > 0  # sampling only
    layers = make_cfg("model=tiny").model.architecture.num_hidden_layers
    # the policy and reference passes: one SDPA call per layer each, under "" only
    assert seen[""]["grad"] > 0 and seen[""]["no_grad"] == seen["eager"]["no_grad"] + 2 * layers


def test_a_rollout_whose_scores_are_all_equal_moves_no_policy_when_asked(make_cfg, tiny):
    """skip_equal_scores: ten completions that all score -1 carry no learning signal; whitening would blow
    the value head's errors and the KL term up to full-size advantages, so they are zeroed instead (and the
    rollout says so). A rollout with one differing score keeps its advantages."""
    from peft import get_peft_model

    prompts = [[{"role": "user", "content": "I feel so"}]] * 4
    for skip in (True, False):
        cfg = ppo_cfg(make_cfg, f"method.skip_equal_scores={skip}")
        model, tokenizer = tiny()
        torch.manual_seed(0)
        policy = loop.PolicyWithValue(get_peft_model(model, lora_config(cfg.method)))

        def same(prompts, completions, **kw):
            return [-1.0] * len(completions)

        def one_differs(prompts, completions, **kw):
            return [1.0] + [-1.0] * (len(completions) - 1)

        flat = loop.make_rollout(
            policy, tokenizer, prompts, cfg.method, [rewards.Reward("same", same, 1.0)], 0.2
        )
        spread = loop.make_rollout(
            policy, tokenizer, prompts, cfg.method, [rewards.Reward("one_differs", one_differs, 1.0)], 0.2
        )
        assert flat["stats"]["equal_scores"] == 1.0 and spread["stats"]["equal_scores"] == 0.0
        assert (flat["advantages"] == 0).all() == skip  # zeroed only when asked
        assert spread["advantages"].abs().sum() > 0


def test_a_fresh_critic_leaves_each_response_the_sign_of_its_score_then_learns(make_cfg, tiny):
    """The value head starts at 0: before any update (KL 0, unwhitened) every response token's advantage is
    its score discounted by lambda, so it has the score's sign; a head that started with noise (as a random
    init on a real model's hidden states did, values of std ~1.5 against returns of +-1) flips some. One
    update then moves the head towards the returns."""
    from peft import get_peft_model

    cfg = ppo_cfg(make_cfg, "method.whiten_advantages=false", "method.learning_rate=1e-2")
    model, tokenizer = tiny()
    torch.manual_seed(0)
    policy = loop.PolicyWithValue(get_peft_model(model, lora_config(cfg.method)))

    def alternate(prompts, completions, **kw):
        return [(-1.0) ** i for i in range(len(completions))]

    prompts = [[{"role": "user", "content": "I feel so"}]] * cfg.method.batch_size
    rollout = loop.make_rollout(
        policy, tokenizer, prompts, cfg.method, [rewards.Reward("alt", alternate, 1.0)], 0.2
    )
    mask = rollout["mask"].bool()
    assert (rollout["values"][mask] == 0).all()
    score = torch.tensor(alternate(prompts, rollout["completions"]))[:, None].expand_as(mask)
    assert (torch.sign(rollout["advantages"][mask]) == score[mask]).all()

    from accelerate import Accelerator

    optimizer = loop.make_optimizer(
        [p for p in policy.parameters() if p.requires_grad], "adamw_torch", cfg.method
    )
    loop.optimise(policy, optimizer, Accelerator(cpu=True), rollout, cfg.method)
    with torch.no_grad():
        _, values = policy(
            rollout["input_ids"],
            rollout["attention_mask"],
            rollout["position_ids"],
            rollout["response"].shape[1],
        )
    before = core.masked_mean(rollout["returns"] ** 2, rollout["mask"])  # the head predicted 0
    after = core.masked_mean((values.float() - rollout["returns"]) ** 2, rollout["mask"])
    assert after < before, (after, before)


def test_max_grad_norm_0_clips_nothing(make_cfg, tiny):
    """method.max_grad_norm=0 means no clipping (transformers' meaning, and what hardware.optimizer_in_backward
    asks for): the same update as a bound no gradient reaches, where clipping to 0 would leave every weight."""
    import copy

    from accelerate import Accelerator

    start, rollout, m, _ = signed_rollout(make_cfg, tiny, "method.weight_decay=0.0")
    before = {n: p.detach().clone() for n, p in start.named_parameters() if p.requires_grad}
    trained, norms = {}, {}
    for bound in (0.0, 1e9):
        policy = copy.deepcopy(start)
        params = [p for p in policy.parameters() if p.requires_grad]
        bounded = copy.deepcopy(m)
        bounded.max_grad_norm = bound
        optimizer = loop.make_optimizer(params, "adamw_torch", bounded)
        torch.manual_seed(1)  # the same mini-batch order and dropout masks in both
        stats = loop.optimise(policy, optimizer, Accelerator(cpu=True), rollout, bounded)
        trained[bound] = {n: p.detach() for n, p in policy.named_parameters() if p.requires_grad}
        norms[bound] = stats["grad_norm"]
    assert norms[0.0] == norms[1e9] > 0
    assert any(not torch.equal(trained[0.0][n], w) for n, w in before.items())
    for n, w in trained[1e9].items():
        torch.testing.assert_close(trained[0.0][n], w, rtol=0, atol=0, msg=n)


def test_the_loop_builds_each_optimizer_it_accepts_and_the_run_refuses_the_rest(make_cfg):
    """hardware.optim under method=ppo: each name the check lets through is built as itself (before the check,
    rmsprop or adagrad silently trained with AdamW); any other transformers name is refused in one line."""
    from rlhf import choices
    from rlhf.errors import ConfigError

    params = [torch.nn.Parameter(torch.zeros(4, 4))]
    m = make_cfg("method=ppo").method
    built = {name: type(loop.make_optimizer(params, name, m)).__name__ for name in ppo.OPTIMIZERS}
    assert built == {
        "adamw_torch_fused": "AdamW",
        "adamw_torch": "AdamW",
        "sgd": "SGD",
        "adafactor": "Adafactor",
        "adamw_bnb_8bit": "AdamW8bit",
        "adamw_8bit": "AdamW8bit",
        "paged_adamw_32bit": "PagedAdamW32bit",
        "paged_adamw_8bit": "PagedAdamW8bit",
    }
    assert set(ppo.OPTIMIZERS) <= set(choices.optimizers())  # names the first check accepts
    for name in ("rmsprop", "adagrad"):
        cfg = make_cfg("method=ppo", "hardware=cpu", f"hardware.optim={name}")
        with pytest.raises(ConfigError) as err:
            choices.check(cfg)
        assert err.value.problems == [
            f"hardware.optim={name}: method=ppo builds its optimizer in its own loop, which knows "
            f"{', '.join(ppo.OPTIMIZERS)}; fix: use one of them (hardware.optim=adamw_torch_fused)"
        ]
    choices.check(make_cfg("method=ppo", "hardware=cpu", "hardware.optim=sgd"))
    choices.check(make_cfg("method=dpo", "hardware=cpu", "hardware.optim=rmsprop"))  # TRL's trainers build it
