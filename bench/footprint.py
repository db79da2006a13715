"""Our own footprint: peak memory of each method's training on the embedded model, beside its speed.

    .venv/bin/python bench/footprint.py [--steps N] [--methods lora,dpo,...] [--malloc tcmalloc,tuned,...]
                                        [--against OVERRIDE ...] [overrides...]      (make bench-footprint)

Each row is one `python -m rlhf method=<m> eval=none` run of `--steps` steps in its own process, on this
machine's profile. Its summary.json gives the peak resident memory of each stage (loading with the plan,
training, saving and samples afterwards: /proc/self/clear_refs resets the high-water mark between them) and
the time per step; the idle process (python importing torch, transformers, trl and peft) is measured the same
way. `--malloc` lists the allocators each method runs on, one after the other, so their memory and speed
are side by side in one table: tcmalloc or jemalloc (preloaded: rlhf.runtime.preload_malloc, RLHF_MALLOC),
glibc's malloc as the run tunes it (`tuned`), and glibc's own thresholds (`glibc`: MALLOC_MMAP_THRESHOLD_ /
MALLOC_TRIM_THRESHOLD_ set, which the tuning respects). The default: what a run uses on this machine
(tcmalloc where it is installed) beside tuned glibc. `--against hardware.lean_layers=false` adds a run of
each method with that override (on the first allocator), so a setting's memory and speed are side by side too;
one --against may hold several, space-separated (`--against "hardware.optim=adafactor hardware.sft_batch_size=2"`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_TRAIN_MB = 1500  # every method's training on the embedded model
TARGET_RUN_MB = 2500  # the default run (LoRA + eval=quick), whole process
METHODS = ("lora", "sft", "prompt-tuning", "rm", "dpo", "kto", "ppo", "grpo", "rloo")
GLIBC = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024), "MALLOC_TRIM_THRESHOLD_": str(128 * 1024)}
MALLOCS = {  # the environment of each allocator's runs
    "tcmalloc": {"RLHF_MALLOC": "tcmalloc"},
    "jemalloc": {"RLHF_MALLOC": "jemalloc"},
    "tuned": {"RLHF_MALLOC": "glibc"},
    "glibc": {"RLHF_MALLOC": "glibc", **GLIBC},
}


def cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    flags = next((ln for ln in info.splitlines() if ln.startswith("flags")), "")
    isa = "AVX-512+BF16" if "avx512_bf16" in flags else "AVX-512" if "avx512f" in flags else "AVX2"
    return f"{name}, {os.cpu_count()} cores, {isa}"


def idle_mb(env: dict[str, str]) -> float:
    """Peak RSS of a process that starts as a run does (rlhf.cli: the allocator) and imports the libraries."""
    code = (
        "from rlhf import cli\n"
        "def idle(argv):\n"
        "    import peft, resource, torch, transformers, trl\n"
        "    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
        "cli.run(idle)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def run(method: str, steps: int, env: dict[str, str], extra: list[str]) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix=f"rlhf-footprint-{method}-")) / "run"
    command = [
        sys.executable, "-m", "rlhf", f"method={method}", "eval=none", f"method.max_steps={steps}",
        "logger=none", "checkpoint.at_end=false", f"hydra.run.dir={run_dir}", *extra,
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return {
            "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"rc {done.returncode}"
        }
    summary = json.loads((run_dir / "summary.json").read_text())
    stages = summary.get("peak_rss_mb_by_stage", {})
    return {
        "load": stages.get("load"),
        "train": stages.get("train"),
        "after": stages.get("eval"),
        "peak": summary["peak_rss_mb"],
        "s_per_step": summary["train_runtime_s"] / max(summary["steps"], 1),
        "malloc": summary.get("malloc", "?"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--malloc",
        default="",
        help=f"comma-separated, of {', '.join(MALLOCS)} (default: tcmalloc,tuned where tcmalloc is installed, "
        "else tuned,glibc)",
    )
    parser.add_argument(
        "--against",
        action="append",
        default=[],
        help="overrides each method also runs with, space-separated in one argument (repeatable)",
    )
    parser.add_argument("overrides", nargs="*", help="extra overrides for every run")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from rlhf.runtime import find_allocator

    default = "tcmalloc,tuned" if find_allocator("tcmalloc") else "tuned,glibc"
    modes = (args.malloc or default).split(",")
    unknown = [m for m in modes if m not in MALLOCS]
    if unknown:
        parser.error(f"--malloc {','.join(unknown)}: not one of {', '.join(MALLOCS)}")
    envs = {mode: {**os.environ, **MALLOCS[mode]} for mode in modes}
    # (label, allocator, extra overrides): every allocator, then each --against on the first one
    variants = [(m, m, []) for m in modes] + [(a, modes[0], a.split()) for a in args.against]
    width = max(8, *(len(v[0]) for v in variants))
    print(f"machine: {cpu()}; {args.steps} steps per run; overrides: {' '.join(args.overrides) or 'none'}")
    idle = {mode: idle_mb(envs[mode]) for mode in modes}
    print(
        "idle process (torch, transformers, trl, peft imported): "
        + ", ".join(f"{m} {v:.0f} MB" for m, v in idle.items())
    )
    header = (
        f"{'method':<14} {'run':<{width}} {'load MB':>8} {'train MB':>9} {'above idle':>10} {'after MB':>9}"
        f" {'s/step':>7}"
    )
    print(header)
    print("-" * len(header))
    results = {}
    for method in args.methods.split(","):
        for label, mode, extra in variants:  # side by side: a method's runs, one after the other
            r = run(method, args.steps, envs[mode], [*args.overrides, *extra])
            results[(method, label)] = r
            if "error" in r:
                print(f"{method:<14} {label:<{width}} failed: {r['error']}")
                continue
            flag = "" if r["train"] <= TARGET_TRAIN_MB else f"  > {TARGET_TRAIN_MB} MB target"
            print(
                f"{method:<14} {label:<{width}} {r['load']:>8.0f} {r['train']:>9.0f} {r['train'] - idle[mode]:>10.0f}"
                f" {r['after']:>9.0f} {r['s_per_step']:>7.2f}{flag}",
                flush=True,
            )
    if len(variants) > 1:
        first, rest = variants[0][0], [v[0] for v in variants[1:]]
        print(f"\n{first} against the others: training peak (MB) and time per step, per method")
        for method in args.methods.split(","):
            a = results.get((method, first), {})
            for other in rest:
                b = results.get((method, other), {})
                if "train" in a and "train" in b:
                    print(
                        f"  {method:<14} vs {other:<{width}} {a['train'] - b['train']:+6.0f} MB, "
                        f"{a['s_per_step'] / b['s_per_step']:.2f}x the time"
                    )


if __name__ == "__main__":
    main()
