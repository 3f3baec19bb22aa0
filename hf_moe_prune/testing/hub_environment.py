"""Pointing `huggingface_hub` and transformers at a loopback `HubServer` for the length of a block."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hf_moe_prune.testing.hub_server import HubServer


@contextlib.contextmanager
def hub_environment(server: HubServer, cache_dir: str | os.PathLike | None = None):
    """Point `huggingface_hub` and transformers at `server`, with its token and a fresh cache, until the block exits.

    Both the environment (for subprocesses) and `huggingface_hub.constants` (read once at import, so patching the
    environment alone does not reach an already imported client) are set, and restored afterwards. So are the shared
    clients that keep the endpoint they were created with: `huggingface_hub`'s module-level `HfApi` (behind
    `huggingface_hub.create_repo` etc.) and transformers' `hf_api()` (used to list tokenizer files), which would
    otherwise go on calling an earlier, stopped server.

    Args:
        server (`HubServer`): A started server.
        cache_dir (`str`, *optional*): HF_HOME to use; a fresh temporary folder by default.
    """
    from huggingface_hub import constants, hf_api

    with contextlib.ExitStack() as stack:
        home = Path(cache_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="hf_home_")))
        env = {
            "HF_ENDPOINT": server.url,
            "HF_TOKEN": server.token,
            "HF_HOME": str(home),
            "HF_HUB_CACHE": str(home / "hub"),
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
        consts = {
            "ENDPOINT": server.url,
            "HUGGINGFACE_CO_URL_TEMPLATE": server.url + "/{repo_id}/resolve/{revision}/{filename}",
            "HF_HOME": str(home),
            "HF_HUB_CACHE": str(home / "hub"),
            "HF_TOKEN_PATH": str(home / "token"),
            "HF_HUB_DISABLE_XET": True,
            "HF_HUB_OFFLINE": False,
            "HF_HUB_DISABLE_TELEMETRY": True,
        }
        clients = [(constants, consts), (hf_api.api, {"endpoint": server.url})]
        if "transformers.utils.hub" in sys.modules:
            clients.append((sys.modules["transformers.utils.hub"], {"_hf_api": None}))  # rebuilt on first use
        saved = [(owner, {key: getattr(owner, key) for key in values}) for owner, values in clients]
        old_env = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        for owner, values in clients:
            for key, value in values.items():
                setattr(owner, key, value)
        try:
            yield server
        finally:
            for owner, values in saved:
                for key, value in values.items():
                    setattr(owner, key, value)
            for key, value in old_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
