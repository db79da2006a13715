"""`python -m rlhf.models [overrides]`: what a run computes about its base model, computed now.

The model is converted or built into the cache, and the base model's eval scores and sample generations
for these settings are cached beside it, so the run does not pay for them. `make setup` runs it for the
default run: converting SmolLM2's GGUF takes about 40 s on a 2-core CPU, scoring it on eval=quick about
60 s and its sample generations about 15 s. It also serves a sweep whose jobs start together.
"""

from __future__ import annotations

from pathlib import Path

from rlhf import cli, config, data, evaluate, methods, models
from rlhf.models.sources import local_dir
from rlhf.validate import validate


def prepare(argv: list[str]) -> None:
    cfg = config.compose(argv)
    validate(cfg)
    if cfg.model.source == "pretrained":
        print(f"model={cfg.model.name}: loaded from the hub or a local directory; nothing to prepare")
        return
    hw = config.resolve_hardware(cfg.hardware, argv, methods.frozen_base(cfg.method))
    cache = Path(cfg.cache_dir).expanduser()
    print(f"model={cfg.model.name}: ready in {local_dir(cfg.model, cache)}")
    method = methods.get(cfg.method.name)
    if method.HEAD != "causal-lm":
        return
    prompts = data.sample_prompts(cfg.data, data.load(cfg.data, method.DATA_FORMATS, cfg.method.name))
    if cfg.eval.tasks:
        evaluate.check(cfg.eval)
    model, tokenizer = models.load(cfg.model, hw, cfg.cache_dir)
    if cfg.eval.tasks:
        evaluate.base_results(cfg.eval, cfg.model, hw, cfg.cache_dir, model, tokenizer)
        print(f"model={cfg.model.name}: base scores on eval={cfg.eval.name} cached in {cache / 'eval'}")
    if prompts:
        evaluate.base_samples(cfg.samples, cfg.model, hw, cfg.cache_dir, model, tokenizer, prompts)
        print(f"model={cfg.model.name}: base sample generations cached in {cache / 'samples'}")


if __name__ == "__main__":
    cli.run(prepare)
