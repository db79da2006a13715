"""The one user-facing error type, and how bad input is reported.

Bad input (a config value, a file, a data row, a machine that lacks what a profile needs) ends the run with
one line per problem: the key or file, the value, and the fix. No traceback unless HYDRA_FULL_ERROR=1.
Bugs in rlhf itself keep their traceback: they are not the user's to fix.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

EXIT_CODE = 2


class UserError(Exception):
    """Bad input the user can fix. `str(err)` is one line: key or file, value, fix."""


class ConfigError(UserError):
    """Several config problems found at once by `validate`."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class Problems:
    """Collects config problems, each as `key=value: rule; fix: what to do`, to raise them all at once."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def check(self, ok: bool, key: str, value: Any, rule: str, fix: str) -> None:
        if not ok:
            self.lines.append(f"{key}={show(value)}: {rule}; fix: {fix}")

    def positive(self, key: str, value: float, example: str) -> None:
        self.check(value > 0, key, value, "must be positive", f"use e.g. {key.split('.')[-1]}={example}")

    def one_of(self, key: str, value: Any, choices: Iterable[str]) -> None:
        choices = list(choices)
        self.check(value in choices, key, value, "unknown value", f"choose one of: {', '.join(choices)}")

    def raise_if_any(self) -> None:
        if self.lines:
            raise ConfigError(self.lines)


def show(value: Any) -> str:
    """A value as the user would write it on the command line."""
    if isinstance(value, bool):
        return str(value).lower()
    return "''" if value == "" else str(value)


def describe(ex: BaseException) -> list[str] | None:
    """One line per problem for bad input (ours, Hydra's or OmegaConf's); None for anything else."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(ex, ConfigError):
        return ex.problems
    if isinstance(ex, UserError):
        return [str(ex)]
    if isinstance(ex, MissingConfigException):
        found = re.search(r"Could not find '([^']+)'", str(ex))
        missing = found.group(1) if found else (ex.missing_cfg_file or "?")
        group, _, option = missing.rpartition("/")
        if group and ex.options:
            return [f"{group}={option}: no such option; fix: choose one of: {', '.join(sorted(ex.options))}"]
        return [
            f"{missing}: no such config; fix: see `python -m rlhf --help` for the groups and their options"
        ]
    if isinstance(ex, ValueError) and str(ex).startswith("Only one of --run, --multirun"):  # Hydra's
        return [
            "-m with --cfg (or --info): Hydra takes one of them at a time; fix: drop -m to print the config, "
            "e.g. python -m rlhf hydra/launcher=slurm --cfg hydra"
        ]
    if isinstance(ex, OverrideParseException):
        return [f"{_first_line(str(ex))}; fix: write overrides as key=value, e.g. method.lora_r=8"]
    if isinstance(ex, (ConfigCompositionException, OmegaConfBaseException)):
        cause = ex if isinstance(ex, OmegaConfBaseException) else ex.__cause__
        if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
            return [f"{cause.full_key}: {_omegaconf_problem(cause)}"]
        return [f"{_first_line(str(ex))}; fix: see `python -m rlhf --help`"]
    return None


def _omegaconf_problem(ex: Any) -> str:
    msg = _first_line(str(getattr(ex, "msg", "") or ex))
    if "not in struct" in msg or ("Key '" in msg and "not" in msg):
        return "no such key; fix: check its spelling (`python -m rlhf --cfg job` lists every key)"
    if "Missing mandatory value" in msg:
        return "has no value; fix: set it on the command line or in the YAML"
    return f"{msg}; fix: give a value of the key's type (`python -m rlhf --cfg job` shows each value)"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def print_errors(problems: list[str]) -> None:
    """Each problem as one `error: ...` line on stderr."""
    for line in problems:
        print(f"error: {line}", file=sys.stderr)


def install_hydra_reporter() -> None:
    """Make Hydra report bad input as one line per problem instead of its multi-line messages.

    Hydra funnels composition errors and the task function's exceptions through
    `hydra._internal.utils.run_and_report`; we wrap it. Anything that is not bad input goes on to Hydra's own
    reporter unchanged, traceback included.
    """
    import hydra._internal.utils as hydra_utils

    if getattr(hydra_utils.run_and_report, "reports_bad_input", False):  # installed already (in-process runs)
        return
    original = hydra_utils.run_and_report

    def run_and_report(func: Callable[[], Any]) -> Any:
        try:
            return func()
        except Exception as ex:
            problems = None if os.environ.get("HYDRA_FULL_ERROR") == "1" else describe(ex)
            if problems is None:
                return original(_raiser(ex))
            print_errors(problems)
            sys.exit(EXIT_CODE)

    run_and_report.reports_bad_input = True
    hydra_utils.run_and_report = run_and_report

    # Hydra also writes "Error executing job with overrides: [...]" above any job's error; for bad input
    # the one line we print says it all
    from hydra.core.utils import JobReturn, JobStatus

    prop = JobReturn.return_value

    def return_value(self: JobReturn) -> Any:
        failed = self.status == JobStatus.FAILED and os.environ.get("HYDRA_FULL_ERROR") != "1"
        if failed and describe(self._return_value) is not None:
            raise self._return_value
        return prop.fget(self)

    JobReturn.return_value = property(return_value, prop.fset)


def _raiser(ex: Exception) -> Callable[[], Any]:
    def reraise() -> Any:
        raise ex

    return reraise


HYDRA_START_FILES = {".hydra", "rlhf.log"}
# what a run writes before and while its trainer starts: a run stopped by bad input leaves none of it
RUN_START_FILES = HYDRA_START_FILES | {"samples.jsonl", "metrics.jsonl", "wandb"}


@contextlib.contextmanager
def discard_run_on_bad_input(run_dir: Path) -> Iterator[None]:
    """On bad input, remove the run directory if it holds only what a run writes before training.

    Nothing that looks like a run stays behind. The directory was new when the run began (the entrypoint
    refuses a non-empty hydra.run.dir), so nothing the user wrote is in it; anything else is kept.
    """
    try:
        yield
    except UserError:
        if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= RUN_START_FILES:
            shutil.rmtree(run_dir)
        raise
