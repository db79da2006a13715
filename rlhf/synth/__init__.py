"""`python -m rlhf.synth`: generate a data set with a model, stage by stage:
validate -> read the inputs (seed tasks, prompts) -> load the reward group and the generator -> the
mode's batches through the surviving loop -> stats.json and card.md.

    synth=magpie          rlhf/synth/magpie.py         conversations from the pre-query template
    synth=self-instruct   rlhf/synth/self_instruct.py  Self-Instruct's bootstrap from seed tasks
    synth=preferences     rlhf/synth/preferences.py    reward-scored chosen / rejected pairs

A run directory (outputs/synth/<date>/<time>_<mode>_<model>/): data.jsonl (rows `python -m rlhf
data.path=<dir>/data.jsonl` trains on as they are), rejected.jsonl (each dropped row and the filter that
dropped it), state.json (what is done: rlhf/synth/loop.py), stats.json (written last: a finished run) and
card.md. `resume=<run dir>` continues a stopped or killed run with its own settings.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlhf.checkpoint import StopRequest
from rlhf.errors import HYDRA_START_FILES, Problems, UserError, discard_run_on_bad_input
from rlhf.synth import backends, filters, loop, magpie, preferences, self_instruct

MODES = {"magpie": magpie, "self-instruct": self_instruct, "preferences": preferences}
INTERRUPTED = "interrupted.json"
# what a resume may change: none of it changes the rows
MAY_CHANGE = ("synth.stall_s", "synth.checkpoint_every", "cache_dir", "hydra.job_logging", "hydra.verbose")


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Generate, filter and write one synth run into `run_dir`; returns stats.json's record."""
    from rlhf.synth import report

    s = cfg.synth
    stop = StopRequest()
    with discard_run_on_bad_input(run_dir):
        chosen_filters = validate(cfg)  # every config problem at once, before torch is imported
        if cfg.resume and not (run_dir / loop.STATE).is_file():
            raise UserError(
                f"resume={cfg.resume}: no {loop.STATE} there, so nothing says where it stopped; fix: give "
                "a run directory of python -m rlhf.synth, or start a new run without resume="
            )
        inputs = read_inputs(s)  # a bad seed-task or prompt file fails here, before any weights load
        from rlhf import config, rewards

        hw = config.resolve_hardware(cfg.hardware)
        backends.check_backend(s.backend)
        scores = s.name == "preferences" or any(isinstance(f, filters.RewardScore) for f in chosen_filters)
        reward = rewards.build(cfg.reward) if scores else []
        generator, tokenizer = load_generator(cfg, hw)
        job = make_job(s, tokenizer, reward, inputs)
        pipeline = filters.Pipeline(chosen_filters, tokenizer, reward)
        (run_dir / INTERRUPTED).unlink(missing_ok=True)  # running again
        if cfg.resume:
            print(f"Resuming {run_dir} from {loop.STATE}")
        stop.install()  # SIGINT / SIGTERM: finish the batch in flight, save the state, stop
        try:
            state = loop.run(job, pipeline, generator, s, cfg.seed, run_dir, bool(cfg.resume), stop)
        finally:
            stop.uninstall()
    if stop.requested:
        interrupted(run_dir, state, stop.signal)
    info = {
        "model": cfg.model.name,
        "path": cfg.model.path,
        "backend": s.backend,
        "device": hw.device,
        "dtype": hw.model_dtype,
    }
    record = report.write(run_dir, cfg, state, job, pipeline.labels(), tokenizer, info)
    report.print_summary(record, run_dir)
    return record


def validate(cfg: DictConfig) -> list[filters.Filter]:
    """Every problem of the synth config at once (a ConfigError); the filters it names, parsed."""
    p = Problems()
    s = cfg.synth
    p.check(cfg.seed >= 0, "seed", cfg.seed, "must be >= 0", "use a non-negative integer, e.g. seed=42")
    p.one_of("synth.name", s.name, MODES)
    p.one_of("synth.backend", s.backend, backends.BACKENDS)
    for key in ("batch_size", "checkpoint_every", "max_new_tokens"):
        p.positive(f"synth.{key}", s[key], "8")
    p.positive("synth.stall_s", s.stall_s, "120")
    p.check(0 < s.top_p <= 1, "synth.top_p", s.top_p, "must be in (0, 1]", "use e.g. synth.top_p=0.9")
    p.check(s.examples >= 0, "synth.examples", s.examples, "must be >= 0", "use e.g. synth.examples=3")
    p.one_of("reward.name", cfg.reward.name, ("keyword", "model", "mix"))
    if cfg.reward.name == "mix":
        p.check(
            len(cfg.reward.components) == len(cfg.reward.weights) > 0,
            "reward.weights",
            list(cfg.reward.weights),
            f"needs one weight per component of reward.components={list(cfg.reward.components)}",
            "give as many weights as components, e.g. reward.weights=[1.0,0.5]",
        )
    if "model" in (cfg.reward.name, *cfg.reward.components):
        p.check(
            "{prompt}" in cfg.reward.template and "{answer}" in cfg.reward.template,
            "reward.template",
            cfg.reward.template,
            "must contain {prompt} and {answer}",
            "write e.g. 'reward.template={prompt}\\n\\n{answer}'",
        )
    mode = MODES.get(s.name)
    chosen = []
    if mode is not None:
        mode_check = CHECKS[s.name]
        mode_check(s, p)
        chosen = filters.parse(s.filters, mode.FIELDS, p)
    p.raise_if_any()
    return chosen


def check_sampled_instructions(s: DictConfig, p: Problems) -> None:
    """The modes that write their own instructions: a count to make and the instructions' sampling."""
    p.positive("synth.count", s.count, "50")
    p.check(
        s.temperature >= 0, "synth.temperature", s.temperature, "must be >= 0", "use 0 (greedy) or e.g. 0.7"
    )
    p.check(
        s.instruction_temperature > 0,
        "synth.instruction_temperature",
        s.instruction_temperature,
        "must be > 0 (greedy would write one instruction over and over)",
        "use e.g. synth.instruction_temperature=1.0",
    )
    p.check(
        0 < s.instruction_top_p <= 1,
        "synth.instruction_top_p",
        s.instruction_top_p,
        "must be in (0, 1]",
        "use e.g. synth.instruction_top_p=1.0",
    )
    p.positive("synth.instruction_max_new_tokens", s.instruction_max_new_tokens, "64")


def check_magpie(s: DictConfig, p: Problems) -> None:
    check_sampled_instructions(s, p)
    p.positive("synth.turns", s.turns, "1")


def check_self_instruct(s: DictConfig, p: Problems) -> None:
    check_sampled_instructions(s, p)
    p.positive("synth.prompt_seed_tasks", s.prompt_seed_tasks, "6")
    p.check(
        s.prompt_machine_tasks >= 0,
        "synth.prompt_machine_tasks",
        s.prompt_machine_tasks,
        "must be >= 0",
        "use e.g. synth.prompt_machine_tasks=2",
    )
    p.positive("synth.classification_shots", s.classification_shots, "4")
    p.positive("synth.instance_shots", s.instance_shots, "2")


def check_preferences(s: DictConfig, p: Problems) -> None:
    p.check(s.count >= 0, "synth.count", s.count, "must be >= 0", "use 0 (every prompt) or e.g. 100")
    p.check(s.n >= 2, "synth.n", s.n, "a pair needs at least 2 answers", "use e.g. synth.n=4")
    p.check(
        bool(s.temperatures) and all(t >= 0 for t in s.temperatures),
        "synth.temperatures",
        list(s.temperatures),
        "must be a non-empty list of temperatures >= 0",
        "use e.g. synth.temperatures=[0.7,1.0]",
    )
    p.one_of("synth.rejected", s.rejected, ("worst", "random_lower"))
    p.check(s.min_margin >= 0, "synth.min_margin", s.min_margin, "must be >= 0", "use e.g. 0.5")


CHECKS = {"magpie": check_magpie, "self-instruct": check_self_instruct, "preferences": check_preferences}


def read_inputs(s: DictConfig) -> Any:
    """What a mode reads besides the model: self-instruct's seed tasks, preferences' prompts."""
    if s.name == "self-instruct":
        return self_instruct.load_seed_tasks(s.seed_tasks)
    if s.name == "preferences":
        return preferences.load_prompts(s.prompts, s.count)
    return None


def make_job(s: DictConfig, tokenizer: Any, reward: list, inputs: Any) -> loop.Job:
    if s.name == "magpie":
        return magpie.Magpie(s, tokenizer)
    if s.name == "self-instruct":
        return self_instruct.SelfInstruct(s, tokenizer, inputs)
    return preferences.Preferences(s, tokenizer, reward, inputs)


def load_generator(cfg: DictConfig, hw: Any) -> tuple[Any, Any]:
    """The generation backend and the generator's tokenizer."""
    if cfg.synth.backend == "vllm":
        from rlhf import data
        from rlhf.models.sources import local_dir

        path = local_dir(cfg.model, Path(cfg.cache_dir).expanduser())  # a converted GGUF too
        tokenizer = data.tokenizer_for(cfg.model, cfg.cache_dir)
        return backends.VLLM(path, tokenizer, hw.model_dtype, cfg.seed), tokenizer
    from rlhf import models

    model, tokenizer = models.load(cfg.model, hw, cfg.cache_dir)
    return backends.Transformers(model, tokenizer), tokenizer


def interrupted(run_dir: Path, state: loop.State, signum: int) -> None:
    """Stopped by a signal after a batch: interrupted.json and the command that resumes; exit 128 + n."""
    name = signal.Signals(signum).name
    command = f"python -m rlhf.synth resume={run_dir}"
    state.stopped_by = name
    state.save(run_dir)
    record = {
        "signal": name,
        "batch": state.next_batch,
        "done": state.done,
        "kept": state.kept,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "resume": command,
    }
    (run_dir / INTERRUPTED).write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"\n{name}: stopped after {state.done} of {state.total} candidates ({state.kept} kept); "
        f"continue with: {command}",
        file=sys.stderr,
    )
    raise SystemExit(128 + signum)


def check_new_run_dir(argv: list[str]) -> None:
    """Refuse a hydra.run.dir that already holds files (Hydra would write over its .hydra/)."""
    given = [a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")]
    if given and Path(given[-1]).is_dir():
        held = [p for p in Path(given[-1]).iterdir() if p.name not in HYDRA_START_FILES]
        if held:
            raise UserError(
                f"hydra.run.dir={given[-1]}: already holds files; fix: choose a new directory, or "
                f"python -m rlhf.synth resume={given[-1]} to continue a synth run there"
            )


def argv_for(argv: list[str]) -> list[str] | None:
    """argv with resume=<dir> replaced by the run's own overrides and its directory; None for a finished
    run (it is said so, and nothing is touched). An override that would change the rows is refused."""
    from rlhf.resume import key

    given = [a.split("=", 1)[1] for a in argv if a.startswith("resume=")][-1]
    run_dir = Path(given).expanduser()
    saved_file = run_dir / ".hydra" / "overrides.yaml"
    if not saved_file.is_file() or not (run_dir / loop.STATE).is_file():
        raise UserError(
            f"resume={given}: not a synth run directory (no .hydra/overrides.yaml or {loop.STATE}); fix: give "
            "the directory of a run started by python -m rlhf.synth"
        )
    saved = [
        str(o) for o in OmegaConf.load(saved_file) if not str(o).startswith(("hydra.run.dir=", "resume="))
    ]
    new = [a for a in argv if not a.startswith("resume=")]
    for override in new:
        if override in saved or key(override).startswith(MAY_CHANGE):
            continue
        was = next((o for o in saved if key(o) == key(override)), f"{key(override)} as composed")
        raise UserError(
            f"{override}: would change the rows the run makes (it ran with {was}); fix: resume with its own "
            f"settings (only {', '.join(MAY_CHANGE[:3])} may change), or start a new run"
        )
    if (run_dir / "stats.json").is_file():
        print(f"resume={given}: the run is finished (stats.json); nothing to resume")
        return None
    changed = {key(o) for o in new}
    kept = [o for o in saved if key(o) not in changed]
    return [*kept, *new, f"hydra.run.dir={run_dir}", f"resume={run_dir}"]
