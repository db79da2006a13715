"""Health monitors: rules on the signals a method logs (KL, entropy, response length, rewards, gradient
norm, ...) that warn, checkpoint or stop the run as they fire (the `monitor` group, conf/monitor/).

A method names the signals it produces in its module's `SIGNALS` (signal -> the key its trainer logs); the
monitor sits between the method and the metrics sink, so every logged row passes through it, whatever the
trainer (TRL's through the metrics callback, our PPO loop directly). A rule looks at its signal's last
`window` values:

    above / below      the window's mean beyond `value`
    rise / fall        the mean of the values after the signal's first `window` (the latest `window` of
                       them, once there are half a window) `value` percent above / below the mean of that
                       first window (its early-run level), relative to that level's size
    spike              the newest value over `value` times the median of the `window` values before it
    nonfinite          the newest value is NaN or infinite
    trend_up / _down   the least-squares slope over the window beyond `value` per step

A rule fires once. Its alarm is printed, written to metrics.jsonl (and so to the tracker) as
`alarm/<rule>: <value>`, and listed in summary.json (`alarms`) and the run's end table. `checkpoint` saves
at the next step boundary and goes on; `stop` saves there and ends the run cleanly: the model is saved and
evaluated as at a normal end, and summary.json says `stopped_early` with the rule and its reason.

Torch-free: validation imports this to check the rules before anything loads.
"""

from __future__ import annotations

import math
import statistics
import sys
from dataclasses import asdict, dataclass
from dataclasses import fields as dataclass_fields
from typing import Any

CONDITIONS = ("above", "below", "rise", "fall", "spike", "nonfinite", "trend_up", "trend_down")
ACTIONS = ("warn", "checkpoint", "stop")

# every signal a method may produce, with what it measures (a method's SIGNALS maps these to its log keys;
# `reward/<name>` is each reward component, where a method's SIGNALS has "reward/*")
SIGNALS = {
    "kl": "KL divergence of the policy to its reference",
    "entropy": "the policy's mean per-token entropy on its samples",
    "response_length": "mean sampled answer length, in tokens",
    "truncated_share": "share of sampled answers cut at max_new_tokens",
    "reward_mean": "mean reward of the sampled answers",
    "reward_std": "standard deviation of their rewards",
    "reward/*": "one reward component's mean (reward/keyword, reward/model, ...)",
    "zero_std_share": "share of prompt groups whose answers all got the same reward (no learning signal)",
    "clip_fraction": "share of tokens whose probability ratio was clipped",
    "approx_kl": "approximate KL between the policy before and after an update",
    "explained_variance": "how much of the returns the value head predicts (ppo)",
    "grad_norm": "gradient norm before clipping",
    "reward_margin": "mean reward margin of chosen over rejected answers",
    "chosen_logp": "log-probability of the chosen answers",
    "preference_accuracy": "share of pairs the model ranks the chosen answer first",
    "loss": "training loss",
    "eval_loss": "held-out loss",
}


@dataclass
class Alarm:
    rule: str
    signal: str
    step: int
    value: float
    condition: str
    threshold: float
    action: str
    why: str

    def line(self) -> str:
        bound = "" if self.condition == "nonfinite" else f" {self.threshold:g}"
        return (
            f"monitor: {self.rule} fired at step {self.step}: {self.signal} {self.value:.4g} "
            f"({self.condition}{bound}) -> {self.action}" + (f"; {self.why}" if self.why else "")
        )


def log_key(signals: dict[str, str], signal: str) -> str | None:
    """The key a method logs `signal` under, or None where it does not produce it."""
    if signal in signals:
        return signals[signal]
    if signal.startswith("reward/") and "reward/*" in signals:
        return signals["reward/*"].format(signal.removeprefix("reward/"))
    return None


def rules_of(node: Any, p: Any = None) -> dict[str, Any]:
    """The monitor node's rules, each typed against schema.MonitorRule (its defaults filled in). A rule that
    does not fit the schema is a problem added to `p` (and left out), or a UserError without `p`."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from rlhf.errors import UserError
    from rlhf.schema import MonitorRule

    typed = {}
    for name, rule in node.rules.items():
        try:
            typed[name] = OmegaConf.merge(OmegaConf.structured(MonitorRule), rule)
        except (OmegaConfBaseException, ValueError) as e:
            message = " ".join(str(e).split("\n")[0].split())
            fields = ", ".join(f.name for f in dataclass_fields(MonitorRule))
            line = f"monitor.rules.{name}: {message}; fix: a rule has the keys {fields}"
            if p is None:
                raise UserError(line) from None
            p.lines.append(line)
    return typed


def check(node: Any, method: str, signals: dict[str, str], p: Any) -> None:
    """The monitor group's rules, added to `p` (rlhf.errors.Problems): known signals, conditions, actions and
    windows, and a signal the method produces unless the rule is optional."""
    for name, rule in rules_of(node, p).items():
        key = f"monitor.rules.{name}"
        known = rule.signal in SIGNALS or rule.signal.startswith("reward/")
        p.check(
            known,
            f"{key}.signal",
            rule.signal,
            "unknown signal",
            f"use one of: {', '.join(s for s in SIGNALS if s != 'reward/*')}, or reward/<component>",
        )
        p.one_of(f"{key}.condition", rule.condition, CONDITIONS)
        p.one_of(f"{key}.action", rule.action, ACTIONS)
        p.positive(f"{key}.window", rule.window, "5")
        if known and not rule.optional:
            produced = sorted(s for s in signals if s != "reward/*")
            p.check(
                log_key(signals, rule.signal) is not None,
                f"{key}.signal",
                rule.signal,
                f"method={method} does not log it (it logs: {', '.join(produced) or 'none of them'})",
                f"use a signal it logs, set {key}.optional=true, or remove the rule (~{key})",
            )


class Monitor:
    """A metrics sink that passes every row on to `sink`, then applies the rules to it.

    `plan` (rlhf.checkpoint.Plan) carries the actions to the method's loop: `wanted` asks for a checkpoint
    at the next step boundary, `halt` ends the run there with a reason. `replay`: the rows a resumed run
    keeps, fed through the rules first so the early-run levels and the alarms already fired carry over;
    their actions were taken before and are not taken again.
    """

    def __init__(self, sink: Any, rules: dict[str, Any], signals: dict[str, str], plan: Any, replay=()):
        self.sink = sink
        self.plan = plan
        self.rules = {name: r for name, r in rules.items() if log_key(signals, r.signal) is not None}
        self.keys = {name: log_key(signals, r.signal) for name, r in self.rules.items()}
        self.history: dict[str, list[float]] = {name: [] for name in self.rules}
        self.alarms: list[Alarm] = []
        for row in replay:
            fired = {a.rule for a in self.alarms}
            for name in self.rules:
                if f"alarm/{name}" in row and name not in fired:
                    self.alarms.append(self._alarm(name, row["step"], row[f"alarm/{name}"]))
            self._observe(row["step"], row)

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.sink.rows

    def write(self, step: int, epoch: float, values: dict[str, Any]) -> None:
        self.sink.write(step, epoch, values)
        for alarm in self._observe(step, values):
            self.alarms.append(alarm)
            print(alarm.line(), file=sys.stderr, flush=True)
            self.sink.write(step, epoch, {f"alarm/{alarm.rule}": alarm.value})
            if self.plan is None:
                continue
            if alarm.action == "checkpoint":
                self.plan.wanted = True
            elif alarm.action == "stop" and self.plan.halt is None:
                self.plan.halt = f"{alarm.rule}: {alarm.why or alarm.line()}"

    def stopped_early(self) -> dict[str, Any] | None:
        """summary.json's `stopped_early`: the step and the rule that ended the run, or None."""
        stops = [a for a in self.alarms if a.action == "stop"]
        if not stops or self.plan is None or self.plan.halt is None:
            return None
        return {"step": stops[0].step, "rule": stops[0].rule, "reason": stops[0].why}

    def summary(self) -> list[dict[str, Any]]:
        return [asdict(a) for a in self.alarms]

    def _observe(self, step: int, values: dict[str, Any]) -> list[Alarm]:
        fired = []
        done = {a.rule for a in self.alarms}
        for name, rule in self.rules.items():
            value = values.get(self.keys[name])
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            history = self.history[name]
            history.append(float(value))
            if name not in done and holds(rule.condition, rule.value, rule.window, history):
                fired.append(self._alarm(name, step, float(value)))
        return fired

    def _alarm(self, name: str, step: int, value: float) -> Alarm:
        r = self.rules[name]
        return Alarm(name, r.signal, step, value, r.condition, r.value, r.action, r.why)


def holds(condition: str, value: float, window: int, history: list[float]) -> bool:
    """Whether a rule's condition holds on a signal's values so far (oldest first)."""
    newest = history[-1]
    if condition == "nonfinite":
        return not math.isfinite(newest)
    finite = [v for v in history if math.isfinite(v)]
    if condition == "spike":
        before = finite[-window - 1 : -1] if math.isfinite(newest) else []
        return len(before) == window and newest > value * abs(statistics.median(before))
    if condition in ("rise", "fall"):
        # the early level is the first window; the current one the values after it (at most a window, at
        # least half of one): they never overlap, so a change is not diluted by the level it is measured from
        after = finite[window:][-window:]
        if len(after) < max(1, window // 2):
            return False
        early = statistics.fmean(finite[:window])
        if early == 0:
            return False
        change = 100 * (statistics.fmean(after) - early) / abs(early)
        return change > value if condition == "rise" else change < -value
    if len(finite) < window:
        return False
    recent = statistics.fmean(finite[-window:])
    if condition == "above":
        return recent > value
    if condition == "below":
        return recent < value
    slope = _slope(finite[-window:])
    return slope > value if condition == "trend_up" else slope < -value


def _slope(values: list[float]) -> float:
    n = len(values)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, statistics.fmean(values)
    num = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values))
    return num / sum((i - mean_x) ** 2 for i in range(n))
