"""The eval stage in memory vs saving the model and running the stock `lm_eval` CLI on it: wall time, ratio.

.venv/bin/python bench/eval_stage.py RUN_DIR     a finished run, e.g. of the default experiment
.venv/bin/python bench/eval_stage.py             runs the default experiment first (about 5 minutes)

The tuned model of RUN_DIR is scored on the run's eval tasks three ways: in memory as the stage does it;
saved as an adapter and read by `lm_eval --model hf --model_args pretrained=<base>,peft=<adapter>`; saved
merged and read by `lm_eval --model hf --model_args pretrained=<merged>`. The CLI times include saving,
the CLI's start-up and its model load, which is what a separate eval command costs. The scores of the three
are printed side by side (they should agree), then the run's own before/after table.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def default_run() -> Path:
    run_dir = Path(tempfile.mkdtemp(prefix="rlhf-eval-bench-")) / "run"
    subprocess.run(
        [sys.executable, "-m", "rlhf", f"hydra.run.dir={run_dir}", "logger=none"], cwd=ROOT, check=True
    )
    return run_dir


def cli(model_args: str, cfg, out: Path) -> tuple[float, dict[str, float]]:
    from rlhf import evaluate

    command = [
        sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", model_args, "--device", "cpu",
        "--include_path", str(evaluate.TASKS), "--tasks", ",".join(cfg.tasks), "--batch_size", str(cfg.batch_size),
        "--output_path", str(out),
    ]  # fmt: skip
    command += ["--limit", str(cfg.limit)] if cfg.limit else []
    command += ["--apply_chat_template"] if cfg.apply_chat_template else []
    start = time.perf_counter()
    subprocess.run(command, cwd=out.parent, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    return seconds, evaluate.flatten_results(results)


def main() -> None:
    from rlhf import evaluate, hardware, models, runtime
    from rlhf.evaluate.__main__ import load_tuned, settings
    from rlhf.evaluate.tables import print_eval_table
    from rlhf.models.sources import local_dir

    runtime.startup()
    run = Path(sys.argv[1]) if len(sys.argv) > 1 else default_run()
    run, cfg = settings([f"run={run}"])
    hw = hardware.resolve(cfg.hardware)
    precision = hw.precision
    base, tokenizer = models.load(cfg.model, hw, cfg.cache_dir)
    tuned = load_tuned(run, base, cfg, hw)

    start = time.perf_counter()
    in_memory = evaluate.score(cfg.eval, tuned, tokenizer, precision)["scores"]
    memory_s = time.perf_counter() - start

    work = Path(tempfile.mkdtemp(prefix="rlhf-eval-cli-"))
    autocast = ",mixed_precision_dtype=bfloat16" if precision == "bf16" else ""  # as the stage computes
    base_dir = local_dir(cfg.model, Path(cfg.cache_dir).expanduser())
    start = time.perf_counter()
    models.save(tuned, tokenizer, work / "adapter")
    save_s = time.perf_counter() - start
    adapter_s, adapter = cli(
        f"pretrained={base_dir},peft={work / 'adapter'},dtype=float32{autocast}", cfg.eval, work / "a"
    )
    start = time.perf_counter()
    models.save_merged(tuned, tokenizer, work / "merged")
    merge_s = time.perf_counter() - start
    merged_s, merged = cli(f"pretrained={work / 'merged'},dtype=float32{autocast}", cfg.eval, work / "m")

    limit = f"limit {cfg.eval.limit}" if cfg.eval.limit else "every item"
    print(f"\n{cfg.method.name} on {cfg.model.name}: {', '.join(cfg.eval.tasks)} ({limit})\n")
    print(f"{'way':<44} {'wall s':>7} {'x in memory':>12}")
    for name, seconds in [
        ("in memory (the eval stage)", memory_s),
        ("save adapter + lm_eval CLI (peft=)", save_s + adapter_s),
        ("save merged + lm_eval CLI (pretrained=)", merge_s + merged_s),
    ]:
        print(f"{name:<44} {seconds:>7.1f} {seconds / memory_s:>11.2f}x")
    print(f"\n{'metric':<44} {'in memory':>9} {'CLI peft':>9} {'CLI merged':>10}")
    for key, value in in_memory.items():
        print(
            f"{key:<44} {value:>9.3f} {adapter.get(key, float('nan')):>9.3f} {merged.get(key, float('nan')):>10.3f}"
        )
    result = json.loads((run / "eval.json").read_text())
    print_eval_table(result)


if __name__ == "__main__":
    main()
