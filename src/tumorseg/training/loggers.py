"""Weights & Biases logger that falls back to offline mode, so no run is ever lost."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

log = logging.getLogger(__name__)

WANDB_HOST = ("api.wandb.ai", 443)


def wandb_api_key() -> str | None:
    """The API key W&B would use: ``WANDB_API_KEY`` or the ``api.wandb.ai`` entry of ``~/.netrc``."""
    key = os.environ.get("WANDB_API_KEY")
    if key:
        return key
    import netrc

    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        auth = netrc.netrc(str(path)).authenticators(os.environ.get("WANDB_BASE_URL_HOST", "api.wandb.ai"))
    except (OSError, netrc.NetrcParseError):
        return None
    return auth[2] if auth else None


def reachable(host: tuple[str, int] = WANDB_HOST, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(host, timeout=timeout):
            return True
    except OSError:
        return False


def wandb_mode(offline: bool | None = None) -> str:
    """``online``, ``offline`` or ``disabled``: ``WANDB_MODE`` if set, else ``offline`` when asked,
    when there is no API key or when the W&B server cannot be reached."""
    env = os.environ.get("WANDB_MODE")
    if env:
        if env not in ("online", "offline", "disabled", "run", "dryrun"):
            raise ValueError(f"WANDB_MODE={env!r} is not a W&B mode; use online, offline or disabled.")
        return {"run": "online", "dryrun": "offline"}.get(env, env)
    if offline:
        return "offline"
    if offline is None:
        if wandb_api_key() is None:
            log.warning("No W&B API key (WANDB_API_KEY or `wandb login`): logging to W&B offline.")
            return "offline"
        if not reachable():
            log.warning("W&B server %s unreachable: logging to W&B offline.", WANDB_HOST[0])
            return "offline"
    return "online"


def wandb_logger(save_dir: str, offline: bool | None = None, **kwargs):
    """A Lightning ``WandbLogger`` writing into ``save_dir/wandb``; offline when needed (see
    ``wandb_mode``). Offline runs are synced later with ``wandb sync <save_dir>/wandb/offline-run-*``."""
    from lightning.pytorch.loggers import WandbLogger

    mode = wandb_mode(offline)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if mode == "offline":
        log.info("W&B run recorded offline in %s/wandb; upload it with `wandb sync`.", save_dir)
    return WandbLogger(save_dir=save_dir, offline=mode == "offline", mode=mode, **kwargs)
