"""Composition of every group option, the schemas' type checks, and validate()."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from rlhf import methods
from rlhf.errors import ConfigError
from rlhf.validate import validate
from tests.conftest import CONF, ROOT

GROUPS = ["model", "method", "hardware", "reward", "data", "eval", "logger", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_validates(make_cfg, group, option):
    cfg = make_cfg(f"{group}={option}")
    if group != "experiment":
        assert cfg[group].name == option
    validate(cfg)  # every shipped option is valid as it stands


def test_each_group_has_the_documented_options():
    assert options("model") == sorted(
        [
            "smollm2-135m",
            "tiny",
            "tinyllama-1.1b-chat",
            "llama-3.2-3b",
            "llama-2-7b",
            "qwen2.5-3b",
            "mistral-7b",
        ]
    )
    assert options("method") == methods.names()  # one YAML per method module, and no other
    assert options("reward") == ["keyword", "mix", "model"]
    assert options("hardware") == [
        "a100",
        "a10g",
        "auto",
        "cpu",
        "h100",
        "l4",
        "rtx4060-8gb",
        "rtx4090",
        "t4",
    ]


def test_every_yaml_opens_with_a_comment_naming_its_command():
    for path in [*CONF.rglob("*.yaml"), *(ROOT / "experiments").glob("*.yaml")]:
        lines = path.read_text().splitlines()
        header = [line for line in lines[:3] if line.startswith("#")]
        assert header, f"{path} has no header comment"
        assert any("python -m rlhf" in line for line in lines[:4]), f"{path} does not name its command"


def test_defaults_are_the_documented_ones(make_cfg):
    cfg = make_cfg()
    assert (cfg.logger.name, cfg.logger.mode, cfg.optimize_metric) == ("wandb", "auto", "loss_end_mean")
    assert (cfg.model.name, cfg.method.name, cfg.hardware.name, cfg.data.name) == (
        "smollm2-135m",
        "lora",
        "auto",
        "instructions",
    )
    assert cfg.model.trust_remote_code is False


def test_experiment_presets_override_only_what_they_change(make_cfg):
    qd = make_cfg("experiment=question-decomposition")
    assert (qd.data.name, qd.method.num_epochs, qd.method.lora_r, qd.model.name) == (
        "question-decomposition",
        3,
        16,
        "smollm2-135m",
    )
    low = make_cfg("experiment=question-decomposition-rtx4060")
    assert (low.hardware.name, low.model.name, low.method.lora_r, low.method.lora_alpha) == (
        "rtx4060-8gb",
        "llama-2-7b",
        8,
        16,
    )
    assert low.hardware.max_seq_length == 256 and low.hardware.load_in_4bit


@pytest.mark.parametrize("name", methods.names())
def test_each_method_chooses_a_default_data_set_it_can_train_on(make_cfg, name):
    from rlhf import data

    cfg = make_cfg(f"method={name}", "data.max_samples=4")
    loaded = data.load(cfg.data, methods.get(name).DATA_FORMATS, name)  # refuses a format the method lacks
    assert loaded.rows and loaded.format in methods.get(name).DATA_FORMATS


def test_a_method_default_data_set_yields_to_the_users_choice(make_cfg):
    assert make_cfg("method=dpo").data.name == "preferences"
    assert make_cfg("method=dpo", "data=chat").data.name == "chat"


def test_ppo_defaults_are_seed_000s(make_cfg):
    m = make_cfg("method=ppo").method
    got = (m.learning_rate, m.batch_size, m.mini_batch_size, m.gradient_accumulation_steps, m.ppo_epochs)
    assert got == (2e-5, 10, 2, 5, 4)
    assert (m.init_kl_coef, m.max_new_tokens, m.lora_r, m.lora_alpha, m.lora_dropout) == (
        0.2,
        10,
        16,
        32,
        0.05,
    )
    assert make_cfg("method=ppo").data.sample_prompts == ["I feel so", "This makes me", "I am really"]


def test_wrong_type_and_unknown_key_fail_at_compose(make_cfg):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        make_cfg("method.lora_r=abc")
    with pytest.raises(ConfigCompositionException):
        make_cfg("method.lora_rank=8")
    with pytest.raises(ConfigCompositionException):
        make_cfg("hardware.load_in_4bit=maybe")


def test_validate_reports_every_problem_at_once(make_cfg):
    cfg = make_cfg("method.lora_r=-1", "method.learning_rate=0", "hardware=cpu", "hardware.precision=fp16")
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    keys = [problem.split("=")[0] for problem in err.value.problems]
    assert keys == ["method.learning_rate", "method.lora_r", "hardware.precision"]
    # each reads key=value: rule; fix: what to do
    assert all(re.fullmatch(r"[\w.]+=\S+: [^;]+; fix: .+", p) for p in err.value.problems), err.value.problems


def _run_without_torch(args: list[str]) -> subprocess.CompletedProcess:
    code = (
        "import sys\n"
        f"sys.argv = ['rlhf', *{args!r}]\n"
        "from rlhf.__main__ import cli\n"
        "try:\n    cli()\nexcept SystemExit:\n    pass\n"
        "heavy = ('torch', 'transformers', 'trl', 'peft', 'wandb', 'optuna')\n"
        "print('HEAVY', sorted(m for m in heavy if m in sys.modules))\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize(
    "args",
    [
        ["--cfg", "job"],
        ["--help"],
        ["hparams_search=lora_optuna", "--cfg", "job"],
        ["method=ppo", "method.gamma=2"],
    ],
)
def test_cfg_job_help_and_validation_do_not_import_torch(args):
    out = _run_without_torch(args)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr
    if args[-1] == "method.gamma=2":  # validate found it, every method module loaded, and torch did not
        assert out.stderr.startswith("error: method.gamma=2.0: must be in [0, 1]")
        return
    if args == ["--help"]:
        assert f"method: {', '.join(methods.names())}" in out.stdout and "schema/" not in out.stdout
        assert out.stdout.startswith("rlhf: ") and "powered by Hydra" not in out.stdout
    else:
        assert "lora_r: 16" in out.stdout


def test_console_script_equals_python_m(run_rlhf):
    script = ROOT / ".venv" / "bin" / "rlhf"
    if not script.exists():
        script = subprocess.run(["which", "rlhf"], capture_output=True, text=True).stdout.strip()
    assert script, "the console script `rlhf` is not installed"
    via_script = subprocess.run([str(script), "--cfg", "job"], capture_output=True, text=True, cwd=ROOT)
    via_module = run_rlhf("--cfg", "job")
    assert via_script.returncode == 0 and via_script.stdout == via_module.stdout


GOLDEN = ROOT / "tests" / "golden" / "cfg_job"


@pytest.mark.parametrize("golden", sorted(p.name for p in GOLDEN.glob("*.yaml")))
def test_cfg_job_prints_the_pinned_config(golden):
    """`python -m rlhf --cfg job` for every preset, method and search: the config the package printed before
    its modules were reorganised (tests/golden/cfg_job/<override>.yaml, captured from the real CLI)."""
    from omegaconf import OmegaConf

    from rlhf import config

    name = golden.removesuffix(".yaml")
    cfg = config.compose([] if name == "default" else [name])
    assert OmegaConf.to_yaml(cfg) == (GOLDEN / golden).read_text()


def test_every_preset_has_a_pinned_config():
    pinned = {p.stem for p in GOLDEN.glob("*.yaml")}
    assert {f"experiment={e}" for e in options("experiment")} <= pinned


@pytest.mark.parametrize(
    "gone",
    [
        "grpo",
        "prefix-tuning",
        pytest.param("rloo", marks=pytest.mark.slow),
        pytest.param("kto", marks=pytest.mark.slow),
    ],
)
def test_a_method_is_its_module_and_its_yaml(tmp_path, gone):
    """Remove one method's module and YAML from a copy of the project: it is gone from the options, --help
    and the errors, and everything else still composes, with no other edit."""
    import shutil

    for part in ("rlhf", "conf", "experiments"):
        shutil.copytree(
            ROOT / part, tmp_path / part, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
        )
    (tmp_path / "rlhf" / "methods" / f"{gone.replace('-', '_')}.py").unlink()
    (tmp_path / "conf" / "method" / f"{gone}.yaml").unlink()
    rest = [m for m in methods.names() if m != gone]

    def run(*args: str) -> subprocess.CompletedProcess:  # the copy's package, not the installed one
        return subprocess.run(
            [sys.executable, "-m", "rlhf", *args], capture_output=True, text=True, cwd=tmp_path
        )

    assert f"method: {', '.join(rest)}\n" in run("--help").stdout
    refused = run(f"method={gone}")
    assert refused.returncode == 2 and f"choose one of: {', '.join(rest)}" in refused.stderr
    assert all(run("--cfg", "job", f"method={m}").returncode == 0 for m in ("dpo", "ppo"))
