"""Seed 000's task on SmolLM2-135M on this CPU: our PPO beside TRL's GRPO, with the same reward and data.

    .venv/bin/python bench/ppo.py [steps] [ppo|grpo ...]          (make bench-ppo)

For each method: the keyword success rate and seconds of every rollout (from metrics.jsonl), peak memory,
and the success rate of 90 fresh samples (30 per query, temperature 1, 10 new tokens) from the saved model.
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
RUNS = {
    "ppo": ["experiment=ppo-positive"],
    "grpo": ["method=grpo", "data=sentiment-prompts", "reward=keyword"],
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
            f"method.max_steps={steps}",
            f"hydra.run.dir={run_dir}",
        ]
        subprocess.run(cmd, cwd=ROOT, check=True)
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        summary = json.loads((run_dir / "summary.json").read_text())
        if name == "ppo":
            success = [r["success_rate"] for r in rows]
            seconds = [r["step_time"] for r in rows]
        else:  # TRL logs the mean keyword reward in [-1, 1]: success = (mean + 1) / 2
            success = [(r["rewards/keyword/mean"] + 1) / 2 for r in rows if "rewards/keyword/mean" in r]
            seconds = [r["step_time"] for r in rows if "step_time" in r]
        results[name] = {
            "success": success,
            "seconds": seconds,
            "peak_rss_mb": summary["peak_rss_mb"],
            "fresh": fresh_success(run_dir / "model"),
        }

    print(f"\nseed 000 on smollm2-135m, {steps} rollouts of 10 completions, LoRA r16, 10 new tokens")
    print(
        f"{'method':<6} {'success per rollout (every 5th)':<44} {'s/rollout':>9} {'peak MB':>8} {'90 fresh':>9}"
    )
    for name, r in results.items():
        trace = " ".join(f"{s:.2f}" for s in r["success"][::5])
        mean_s = sum(r["seconds"]) / max(len(r["seconds"]), 1)
        print(f"{name:<6} {trace:<44} {mean_s:>9.1f} {r['peak_rss_mb']:>8.0f} {r['fresh']:>9.2f}")
    first = {
        name: next((i + 1 for i, s in enumerate(r["success"]) if s >= 0.95), None)
        for name, r in results.items()
    }
    print("first rollout with success >= 0.95:", first)
    if {"ppo", "grpo"} <= results.keys():
        ratio = sum(results["ppo"]["seconds"]) / sum(results["grpo"]["seconds"])
        print(f"ppo / grpo seconds per rollout: {ratio:.2f}")


if __name__ == "__main__":
    main()
