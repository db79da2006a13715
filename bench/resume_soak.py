"""Kill a real run with SIGKILL at random moments, resume it each time, and compare its end with one
uninterrupted run: the same loss (and reward) at every step, the same final weights bit for bit.

    .venv/bin/python bench/resume_soak.py [kills] [overrides...]     (make bench-resume)

Default: LoRA on the embedded model, 16 steps, a checkpoint every 2, no eval, three kills; then the same for
`experiment=ppo-positive` (8 rollouts). Prints, per run, the kills, the steps each resume started from and
whether the curve and the weights matched.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["eval=none", "logger=none", "checkpoint.every=2"]
RUNS = {
    "lora, embedded model": ["method.max_steps=16"],
    "experiment=ppo-positive": ["experiment=ppo-positive", "method.max_steps=8", "checkpoint.every=1"],
}


def curve(run_dir: Path) -> list:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("loss"), r.get("reward")) for r in rows]


def last_step(run_dir: Path) -> int:
    file = run_dir / "metrics.jsonl"
    lines = file.read_text().splitlines() if file.is_file() else []
    return max((json.loads(x)["step"] for x in lines if x.endswith("}")), default=0)  # whole lines only


def weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    found = {}
    for file in sorted((run_dir / "model").glob("*.safetensors")):
        found.update({f"{file.name}:{k}": v for k, v in load_file(file).items()})
    return found


def rlhf(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rlhf", *args], cwd=ROOT, stdout=subprocess.DEVNULL)


def soak(name: str, overrides: list[str], kills: int, base: Path, rng: random.Random) -> None:
    import torch

    whole, killed = base / f"{name[:4]}-whole", base / f"{name[:4]}-killed"
    assert rlhf(*overrides, *COMMON, f"hydra.run.dir={whole}").wait() == 0
    proc, resumed_from = rlhf(*overrides, *COMMON, f"hydra.run.dir={killed}"), []
    for _ in range(kills):
        # at a random step past the last checkpoint, a random moment into that step
        target = (resumed_from[-1] if resumed_from else 0) + rng.randint(1, 3)
        while proc.poll() is None and last_step(killed) < target:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.0))
        if proc.poll() is not None:
            break
        proc.kill()
        proc.wait()
        done = (
            sorted((killed / "checkpoints").glob("step-*/complete.json"))
            if (killed / "checkpoints").is_dir()
            else []
        )
        resumed_from.append(max((int(p.parent.name[5:]) for p in done), default=0))
        # resume=<dir> needs a checkpoint; before the first one, the run starts again in the same place
        proc = (
            rlhf(f"resume={killed}")
            if done
            else rlhf(*overrides, *COMMON, f"hydra.run.dir={killed}", "resume=auto")
        )
    assert proc.wait() == 0
    a, b = weights(killed), weights(whole)
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    print(
        f"{name:<26} kills {len(resumed_from)}, resumed from steps {resumed_from}: "
        f"curve {'equal' if curve(killed) == curve(whole) else 'DIFFERENT'}, weights {'equal' if same else 'DIFFERENT'}"
    )


def main() -> None:
    kills = int(sys.argv[1]) if len(sys.argv) > 1 else 3  # each at a random step past the last checkpoint
    chosen = {"custom": sys.argv[2:]} if len(sys.argv) > 2 else RUNS
    base = Path(tempfile.mkdtemp(prefix="rlhf-bench-resume-"))
    rng = random.Random(0)
    for name, overrides in chosen.items():
        soak(name, overrides, kills, base, rng)


if __name__ == "__main__":
    main()
