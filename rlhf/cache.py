"""What a base model computes once and every later run reads: JSON entries under `<cache_dir>/<kind>/`.

A key covers the base model's config and files, the resolved hardware profile, the library versions and
whatever else the caller names, so a sweep or a second run on the same base computes each entry once
(`python -m rlhf.models` fills them ahead of a run).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


def plain(node: Any) -> Any:
    """A config node or a schema dataclass instance as plain JSON-able values."""
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    if is_dataclass(node):
        return asdict(node)
    return node


def base_key(model_cfg: Any, hw: Any, model_dir: str, **what: Any) -> str:
    """A key for what the base model computes: its config and files, the hardware profile, and `what`."""
    from importlib.metadata import version

    def fingerprint(files) -> list:
        return [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(files) if p.is_file()]

    payload = {
        "model": plain(model_cfg),
        "model_files": fingerprint(Path(model_dir).glob("*")) if Path(model_dir).is_dir() else model_dir,
        "hardware": plain(hw),
        "torch": version("torch"),
        "transformers": version("transformers"),
        **what,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def entry(cache_dir: str, kind: str, name: str, key: str) -> Path:
    return Path(cache_dir).expanduser() / kind / f"{name}-{key}.json"


def read_or_compute(file: Path, compute: Callable[[], Any]) -> tuple[Any, bool]:
    """(value, from_cache): the entry's value, computed and written first when it is missing."""
    if file.is_file():
        return json.loads(file.read_text()), True
    value = compute()
    write_atomically(file, value)
    return value, False


def write_atomically(file: Path, value: Any) -> None:
    """Concurrent sweep jobs may write the same entry: each writes its own file, then renames it."""
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    tmp.replace(file)
