"""Model + tokenizer for (model config, hardware profile).

Every source ends as a plain Hugging Face directory that `from_pretrained` loads, so a saved adapter's
`base_model_name_or_path` always points at something transformers and peft can load again:
- pretrained: a hub id or local directory, used as it is;
- gguf: a GGUF file inside an installed Python package (the embedded SmolLM2), de-quantized once into
  `<cache_dir>/models/`;
- tiny: a randomly initialised tiny Llama with the tokenizer in rlhf/assets, built once into the cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from rlhf import hardware
from rlhf.errors import UserError

ASSETS = Path(__file__).parent / "assets"
TINY_INIT_SEED = 0  # the tiny model's weights do not depend on the run's seed


def load(cfg: DictConfig, hw: DictConfig, cache_dir: str, head: str = "causal-lm"):
    """(model, tokenizer) ready to train on the profile's device.

    `head` is causal-lm, or sequence-classification for a reward model (one score per sequence).
    """
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    path = local_dir(cfg, Path(cache_dir).expanduser())
    if not Path(path).exists():
        _check_hub(cfg)
    common = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(path, **common)
        tokenizer = AutoTokenizer.from_pretrained(path, **common)
    except OSError as e:
        raise UserError(
            f"model.path={cfg.path}: cannot be loaded ({_first_line(e)}); fix: connect to the network once so "
            "the hub caches it (gated models also need `hf auth login`), or set model.path to a local directory"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    quant = hardware.quantization(hw, count_params(config) / 1e9)
    auto = AutoModelForCausalLM if head == "causal-lm" else AutoModelForSequenceClassification
    extra = {} if head == "causal-lm" else {"num_labels": 1, "pad_token_id": tokenizer.pad_token_id}
    model = auto.from_pretrained(
        path,
        **common,
        **extra,
        dtype=hardware.DTYPES[hw.model_dtype],
        quantization_config=quant,
        device_map={"": hardware.device(hw)},
        use_safetensors=True,
    )
    if quant is not None and hw.device == "cpu":
        keep_4bit_trainable(model)
    return model, tokenizer


def local_dir(cfg: DictConfig, cache: Path) -> str:
    """The directory (or hub id) that from_pretrained reads for this model config."""
    if cfg.source == "pretrained":
        return str(Path(cfg.path).expanduser()) if Path(cfg.path).expanduser().exists() else cfg.path
    if cfg.source == "gguf":
        return str(_gguf_to_hf(cfg, cache))
    return str(_build_tiny(cfg, cache))


def count_params(config) -> int:
    """Parameter count from the config alone (the model is built on the meta device: no memory)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def keep_4bit_trainable(model) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference.

    On a CPU with AVX512-BF16, a Linear4bit forward pass without gradients repacks its weight into an
    inference-only layout; every later forward pass then runs a kernel autograd cannot see through, and the
    LoRA adapters below it silently get zero gradients. Generating samples before training triggers exactly
    that, so the repacking is switched off for models we train.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def save(model, tokenizer, out: Path) -> None:
    """Adapter (PEFT) or full weights, as safetensors, with the tokenizer: loads with transformers / peft."""
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def save_merged(model, tokenizer, out: Path) -> None:
    """The LoRA adapter folded into the base weights: a plain model that needs no peft to load.

    Merging changes the weights in place, so it runs after everything else has used the adapter model.
    """
    model.merge_and_unload().save_pretrained(out)
    tokenizer.save_pretrained(out)


def encode_chat_prompts(tokenizer, prompts: list[list[dict]], device) -> dict:
    """Chat prompts rendered with the generation prompt, left-padded into one batch for `generate`."""
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    finally:
        tokenizer.padding_side = side


def trainable_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


# --------------------------------------------------------------------------- sources


def _check_hub(cfg: DictConfig) -> None:
    """Fail at once, in one line, when a hub model is neither cached nor reachable (instead of ~30 s of retries)."""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(cfg.path, "config.json", revision=cfg.revision), str):
        return
    host = hub_host()
    if not hub_reachable():
        raise UserError(
            f"model.path={cfg.path}: not in the local Hugging Face cache and {host} cannot be reached (offline); "
            "fix: run once with network access, or set model.path to a local model directory, "
            "or use model=smollm2-135m (embedded)"
        )


def hub_host() -> str:
    from urllib.parse import urlparse

    from huggingface_hub import constants

    return urlparse(constants.ENDPOINT).hostname


def hub_reachable() -> bool:
    """Whether the Hugging Face hub answers: a 5 s connect test, not the libraries' ~30 s of retries."""
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        socket.create_connection((hub_host(), 443), timeout=5).close()
    except OSError:
        return False
    return True


def _gguf_to_hf(cfg: DictConfig, cache: Path) -> Path:
    out = cache / "models" / f"{cfg.name}-{Path(cfg.gguf_file).stem}"
    if (out / "config.json").is_file():
        return out
    spec = importlib.util.find_spec(cfg.path)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"model.path={cfg.path}: the package holding the model is not installed; fix: {cfg.install_hint}"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    if not (package / cfg.gguf_file).is_file():
        raise UserError(f"model.gguf_file={cfg.gguf_file}: not found in {package}; fix: name a file there")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"Converting {cfg.gguf_file} to a Hugging Face directory once: {out}")
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=cfg.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(package, gguf_file=cfg.gguf_file, dtype=torch.float32)
    # the weights are now plain float32; without this the saved config claims GGUF quantization
    model.hf_quantizer = None
    model.is_quantized = False
    del model.config.quantization_config
    _save_atomically(out, model, tokenizer)
    return out


def _build_tiny(cfg: DictConfig, cache: Path) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer_dir = ASSETS / cfg.path
    architecture = OmegaConf.to_container(cfg.architecture)
    key = json.dumps(architecture, sort_keys=True) + (tokenizer_dir / "tokenizer.json").read_text()
    out = cache / "models" / f"tiny-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if (out / "config.json").is_file():
        return out
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **architecture,
    )
    with torch.random.fork_rng():
        torch.manual_seed(TINY_INIT_SEED)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    _save_atomically(out, model, tokenizer)
    return out


def _save_atomically(out: Path, model, tokenizer) -> None:
    """Write to a temporary sibling, then rename: a crash never leaves a half-written cache entry."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(out)
    except OSError:
        if (out / "config.json").is_file():  # another process finished first
            return
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__


def prepare(argv: list[str]) -> None:
    """`python -m rlhf.models [overrides]`: what a run computes about its base model, computed now.

    The model is converted or built into the cache, and the base model's eval scores and sample
    generations for these settings are cached beside it, so the run does not pay for them.
    `make setup` runs it for the default run: converting SmolLM2's GGUF takes about 40 s on a 2-core CPU,
    scoring it on eval=quick about 60 s and its sample generations about 15 s.
    """
    from hydra import compose, initialize_config_dir

    from rlhf import data, evaluate
    from rlhf.__main__ import CONF
    from rlhf.config import register_schemas, validate
    from rlhf.methods import get

    register_schemas()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=argv)
        validate(cfg)
        if cfg.model.source == "pretrained":
            print(f"model={cfg.model.name}: loaded from the hub or a local directory; nothing to prepare")
            return
        hw = hardware.resolve(cfg.hardware, argv)
    cache = Path(cfg.cache_dir).expanduser()
    print(f"model={cfg.model.name}: ready in {local_dir(cfg.model, cache)}")
    method = get(cfg.method.name)
    if method.HEAD != "causal-lm":
        return
    prompts = data.sample_prompts(cfg.data, data.load(cfg.data, method.DATA_FORMATS, cfg.method.name))
    if cfg.eval.tasks:
        evaluate.check(cfg.eval)
    model, tokenizer = load(cfg.model, hw, cfg.cache_dir)
    if cfg.eval.tasks:
        evaluate.base_results(cfg.eval, cfg.model, hw, cfg.cache_dir, model, tokenizer)
        print(f"model={cfg.model.name}: base scores on eval={cfg.eval.name} cached in {cache / 'eval'}")
    if prompts:
        evaluate.base_samples(cfg.samples, cfg.model, hw, cfg.cache_dir, model, tokenizer, prompts)
        print(f"model={cfg.model.name}: base sample generations cached in {cache / 'samples'}")


if __name__ == "__main__":
    import os
    import sys

    from rlhf import runtime
    from rlhf.errors import EXIT_CODE, describe, report

    runtime.tune_malloc()
    runtime.tune_blas()
    runtime.quiet_libraries()
    try:
        prepare(sys.argv[1:])
    except Exception as ex:  # bad input: one line per problem, with its fix
        problems = describe(ex)
        if problems is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        report(problems)
        sys.exit(EXIT_CODE)
