"""Where stackalign keeps what it builds once and reuses: converted models and worlds.

The cache root is ``$STACKALIGN_CACHE``, else ``~/.cache/stackalign``; models live under ``models/NAME`` and
worlds under ``worlds/...``. A recipe may name a cached world instead of giving its directory
(``NAMED_WORLDS``). Nothing here imports a model library, so every layer can ask where the cache is.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["NAMED_WORLDS", "default_cache_root"]

# world names a recipe's `world:` may use instead of a directory: each is built once into the cache
NAMED_WORLDS = ("default", "smol")


def default_cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$STACKALIGN_CACHE``, else ``~/.cache/stackalign``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("STACKALIGN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "stackalign"
