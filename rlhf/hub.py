"""The Hugging Face hub as seen from here: is a path local or a hub id, is the hub reachable, is a model or
data set cached. A fast answer (a 5 s connect test) instead of the libraries' ~30 s of retries offline."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from rlhf.errors import UserError


def looks_local(path: str) -> bool:
    """A path the user means as a file or directory on this machine (not a hub id)."""
    return path.startswith(("/", ".", "~")) or path.count("/") > 1 or Path(path).expanduser().exists()


def host() -> str:
    from urllib.parse import urlparse

    from huggingface_hub import constants

    return urlparse(constants.ENDPOINT).hostname


def reachable() -> bool:
    """Whether the Hugging Face hub answers: a 5 s connect test."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        socket.create_connection((host(), 443), timeout=5).close()
    except OSError:
        return False
    return True


def check_model(path: str, revision: str) -> None:
    """Fail at once, in one line, when a hub model is neither cached nor reachable."""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(path, "config.json", revision=revision), str):
        return
    if not reachable():
        raise UserError(
            f"model.path={path}: not in the local Hugging Face cache and {host()} cannot be reached (offline); "
            "fix: run once with network access, or set model.path to a local model directory, "
            "or use model=smollm2-135m (embedded)"
        )


def check_dataset(task: str, path: str) -> None:
    """Fail in one line when an eval task's hub data set is neither cached nor reachable."""
    from huggingface_hub import scan_cache_dir

    try:
        cached = any(r.repo_id == path and r.repo_type == "dataset" for r in scan_cache_dir().repos)
    except Exception:  # no cache directory yet
        cached = False
    if not cached and (os.environ.get("HF_DATASETS_OFFLINE") == "1" or not reachable()):
        raise UserError(
            f"eval.tasks: {task} needs the data set {path}, which is not in the local Hugging Face cache, and "
            f"{host()} cannot be reached (offline); fix: run once with network access, or use eval=quick "
            "(offline tasks) or eval=none"
        )
