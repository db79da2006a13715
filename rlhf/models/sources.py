"""Where a model config's weights come from, as a plain Hugging Face directory `from_pretrained` loads:
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

from omegaconf import DictConfig, OmegaConf

from rlhf.errors import UserError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TINY_INIT_SEED = 0  # the tiny model's weights do not depend on the run's seed


def local_dir(cfg: DictConfig, cache: Path) -> str:
    """The directory (or hub id) that from_pretrained reads for this model config."""
    if cfg.source == "pretrained":
        return str(Path(cfg.path).expanduser()) if Path(cfg.path).expanduser().exists() else cfg.path
    if cfg.source == "gguf":
        return str(_gguf_to_hf(cfg, cache))
    return str(_build_tiny(cfg, cache))


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
    import torch
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


def _tiny_config(cfg: DictConfig):
    """The tiny Llama's config and tokenizer: its architecture from the YAML, its vocabulary from the tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig

    tokenizer = AutoTokenizer.from_pretrained(ASSETS / cfg.path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **OmegaConf.to_container(cfg.architecture),
    )
    return config, tokenizer


def config_of(cfg: DictConfig, cache: Path):
    """The model's transformers config without building or converting its weights where it can be had so
    (tiny: from its YAML; gguf: once converted; pretrained: the local directory or the hub cache)."""
    from transformers import AutoConfig

    if cfg.source == "tiny":
        return _tiny_config(cfg)[0]
    path = local_dir(cfg, cache)
    return AutoConfig.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)


def _build_tiny(cfg: DictConfig, cache: Path) -> Path:
    import torch
    from transformers import LlamaForCausalLM

    tokenizer_dir = ASSETS / cfg.path
    architecture = OmegaConf.to_container(cfg.architecture)
    key = json.dumps(architecture, sort_keys=True) + (tokenizer_dir / "tokenizer.json").read_text()
    out = cache / "models" / f"tiny-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if (out / "config.json").is_file():
        return out
    config, tokenizer = _tiny_config(cfg)
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
