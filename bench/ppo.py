"""Seed 000's task on SmolLM2-135M on this CPU: our PPO beside TRL's GRPO, with the same reward and data.

    .venv/bin/python bench/ppo.py [steps] [ppo|grpo ...]          (make bench-ppo)

For each method: the keyword success rate and seconds of every rollout (from metrics.jsonl), the first
rollout at >= 0.95 and the seconds to it, the peak memory of training alone (summary.json's
peak_rss_mb_by_stage) and of the whole run, and the success rate of 90 fresh samples (30 per query,
temperature 1, 10 new tokens) from the saved model. GRPO runs with num_iterations=4 (4 updates per rollout,
like PPO's ppo_epochs). Then where a PPO rollout's time goes (metrics.jsonl's time/<phase>_s).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlhf.schema import RewardConfig  # noqa: E402

# the keyword reward's words (seed 000's list), read from their one home
WORDS = re.compile(r"\b(" + "|".join(map(re.escape, RewardConfig().words)) + r")\b", re.IGNORECASE)
QUERIES = ["I feel so", "This makes me", "I am really"]
GRPO_ITERATIONS = 4  # updates per generation: a rollout of GRPO is this many optimizer steps
RUNS = {
    "ppo": ["experiment=ppo-positive"],
    "grpo": [
        "method=grpo",
        "data=sentiment-prompts",
        "reward=keyword",
        f"method.num_iterations={GRPO_ITERATIONS}",
    ],
}


def fresh_success(model_dir: Path, per_query: int = 30) -> float:
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    model = AutoPeftModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    hits = 0
    for query in QUERIES:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": query}], tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer([text] * per_query, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(
                **ids,
                do_sample=True,
                top_k=0,
                top_p=1.0,
                temperature=1.0,
                max_new_tokens=10,
                pad_token_id=tokenizer.pad_token_id,
            )
        completions = tokenizer.batch_decode(out[:, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        hits += sum(bool(WORDS.search(c)) for c in completions)
    return hits / (per_query * len(QUERIES))


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    chosen = sys.argv[2:] or list(RUNS)
    base = Path(tempfile.mkdtemp(prefix="rlhf-bench-ppo-"))
    results = {}
    for name in chosen:
        overrides = RUNS[name]
        run_dir = base / name
        cmd = [
            sys.executable,
            "-m",
            "rlhf",
            *overrides,
            # the same number of rollouts: GRPO generates once every num_iterations optimizer steps
            f"method.max_steps={steps * (GRPO_ITERATIONS if name == 'grpo' else 1)}",
            f"hydra.run.dir={run_dir}",
        ]
        subprocess.run(cmd, cwd=ROOT, check=True)
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        summary = json.loads((run_dir / "summary.json").read_text())
        if name == "ppo":  # one row per rollout (the held-out rows and alarms have no success_rate)
            rows = [r for r in rows if "success_rate" in r]
            success = [r["success_rate"] for r in rows]
            seconds = [r["step_time"] for r in rows]
        else:  # TRL logs the mean keyword reward in [-1, 1]: success = (mean + 1) / 2
            success = [(r["rewards/keyword/mean"] + 1) / 2 for r in rows if "rewards/keyword/mean" in r]
            steps_s = [
                r["step_time"] for r in rows if "step_time" in r
            ]  # a rollout: its num_iterations steps
            seconds = [sum(steps_s[i : i + GRPO_ITERATIONS]) for i in range(0, len(steps_s), GRPO_ITERATIONS)]
        results[name] = {
            "success": success,
            "seconds": seconds,
            "rows": rows,
            "peak_rss_mb": summary["peak_rss_mb"],
            "train_mb": summary.get("peak_rss_mb_by_stage", {}).get("train", float("nan")),
            "fresh": fresh_success(run_dir / "model"),
        }

    print(f"\nseed 000 on smollm2-135m, {steps} rollouts of 10 completions, LoRA r16, 10 new tokens")
    header = f"{'method':<6} {'success per rollout (every 5th)':<40} {'first>=.95':>10} {'s to it':>8}"
    print(header + f" {'s/rollout':>9} {'train MB':>8} {'run MB':>7} {'90 fresh':>9}")
    to_target = {}
    for name, r in results.items():
        trace = " ".join(f"{s:.2f}" for s in r["success"][::5])
        mean_s = sum(r["seconds"]) / max(len(r["seconds"]), 1)
        first = next((i + 1 for i, s in enumerate(r["success"]) if s >= 0.95), None)
        to_target[name] = sum(r["seconds"][:first]) if first else None
        reach = f"{to_target[name]:.0f}" if first else "-"
        print(
            f"{name:<6} {trace:<40} {first or '-':>10} {reach:>8} {mean_s:>9.1f} {r['train_mb']:>8.0f}"
            f" {r['peak_rss_mb']:>7.0f} {r['fresh']:>9.2f}"
        )
    if {"ppo", "grpo"} <= results.keys():
        ratio = sum(results["ppo"]["seconds"]) / sum(results["grpo"]["seconds"])
        print(f"ppo / grpo seconds per rollout: {ratio:.2f}")
        if to_target["ppo"] and to_target["grpo"]:
            print(
                f"ppo / grpo seconds to the first >= 0.95: {to_target['ppo'] / to_target['grpo']:.2f} (target <= 0.7)"
            )
        print(
            f"ppo / grpo training peak: {results['ppo']['train_mb'] / results['grpo']['train_mb']:.2f} (target <= 1.2)"
        )
    if "ppo" in results:  # where a rollout's time goes
        phases = sorted({k for row in results["ppo"]["rows"] for k in row if k.startswith("time/")})
        rows = results["ppo"]["rows"]
        total = sum(r["step_time"] for r in rows)
        print("ppo, seconds per rollout by phase (mean over rollouts, share of the rollout):")
        for key in phases:
            spent = sum(r.get(key, 0.0) for r in rows)
            print(
                f"  {key.removeprefix('time/').removesuffix('_s'):<16} {spent / len(rows):6.2f} s  {spent / total:5.1%}"
            )


if __name__ == "__main__":
    main()
