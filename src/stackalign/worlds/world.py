"""Loading a world: a world directory (a sandbox world here, a smol world through :mod:`.smol`), a named
world, the sandbox world's build and the cached default world. The :class:`World` value, the manifest reader,
the files' check and the build-once cache are in :mod:`.world_dir` (re-exported here)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import stackalign.worlds.text as T
from stackalign.cache import NAMED_WORLDS, default_cache_root
from stackalign.worlds.build import WORLD_VERSION, build_world_dir, resolve_params
from stackalign.worlds.world_dir import World, read_manifest, reuse_or_build, verify_files

__all__ = [
    "NAMED_WORLDS",
    "World",
    "build_world",
    "cached_world",
    "default_cache_root",
    "default_world",
    "load_world",
    "named_world",
    "verify_files",
]


def named_world(name: str, cache_dir: str | os.PathLike | None = None, *, progress: bool = True) -> World:
    """The cached world called ``name``: ``default`` (the sandbox world) or ``smol`` (the smol world on
    SmolLM2-135M-Instruct, ``stackalign.worlds.smol``), built on first use."""
    if name == "default":
        return default_world(cache_dir, progress=progress)
    if name == "smol":
        from stackalign.worlds.smol import smol_world

        return smol_world(cache_dir, progress=progress)
    raise ValueError(
        f"world: unknown world name {name!r}; use one of {list(NAMED_WORLDS)} or a world directory"
    )


def load_world(path: str | os.PathLike, *, verify: bool = True) -> World:
    """Load a world built by :func:`build_world` / ``stackalign world build`` (a sandbox or a smol world), or
    a named one (``NAMED_WORLDS``, when no directory of that name exists).

    FileNotFoundError if the directory or its manifest is missing; ValueError if the manifest is not a
    world manifest of this version, or (``verify=True``) a file is missing or its sha256 differs.
    """
    if str(path) in NAMED_WORLDS and not Path(path).expanduser().exists():
        return named_world(str(path))
    root, manifest = read_manifest(path)
    if manifest.get("kind") == "smol":
        from stackalign.worlds.smol import load_smol_world

        return load_smol_world(root, manifest, verify=verify)
    if manifest.get("version") != WORLD_VERSION or manifest.get("text_version") != T.WORLD_TEXT_VERSION:
        raise ValueError(
            f"world at {str(root)!r} has version {manifest.get('version')}/{manifest.get('text_version')}, this "
            f"stackalign expects {WORLD_VERSION}/{T.WORLD_TEXT_VERSION}; rebuild it with `stackalign world build`"
        )
    if verify:
        verify_files(root, manifest)
    prompts = json.loads((root / "prompts.json").read_text())
    return World(
        root=root,
        policy_dir=root / "policy",
        reward_dir=root / "reward",
        manifest=manifest,
        train_prompts=prompts["train"],
        val_prompts=prompts["val"],
        test_prompts=prompts["test"],
        stop_strings=list(manifest.get("stop_strings", T.STOP_STRINGS)),
        max_new_tokens=int(manifest.get("max_new_tokens", 64)),
        eos_token=manifest.get("eos_token", T.EOS_TOKEN),
        preferred_threshold=float(manifest.get("preferred_threshold", T.PREFERRED_THRESHOLD)),
    )


def build_world(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    bias: float | None = None,
    pairs: int | None = None,
    label_noise: float | None = None,
    preset: str = "default",
    progress: bool = True,
) -> World:
    """Build a world into ``out_dir`` (replacing a world already there) and load it.

    None for ``bias`` / ``pairs`` / ``label_noise`` takes the preset's value. ``preset="micro"`` builds
    in seconds (for tests); ``"default"`` in about a minute or two on a laptop CPU.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    params = resolve_params(preset, bias=bias, pairs=pairs, label_noise=label_noise)
    build_world_dir(out_dir, seed=seed, params=params, progress=progress)
    return load_world(out_dir)


def default_world(cache_dir: str | os.PathLike | None = None, *, progress: bool = True) -> World:
    """The default world (seed 0, preset "default"), built once into
    ``<cache root>/worlds/default-seed0`` (cache root: ``cache_dir``, ``$STACKALIGN_CACHE`` or
    ``~/.cache/stackalign``) and reused while its manifest matches this version and parameters and its
    files verify. Concurrent callers wait on a lock instead of building twice."""
    root = default_cache_root(cache_dir) / "worlds" / "default-seed0"
    want = resolve_params("default")
    want_params = {"seed": 0, "preset": "default", **{k: want[k] for k in ("bias", "pairs", "label_noise")}}

    return cached_world(
        root,
        lambda w: w.params == want_params,
        lambda: build_world(root, seed=0, preset="default", progress=progress),
    )


def cached_world(root: Path, wanted, build) -> World:
    """The world at ``root`` if it loads, verifies and ``wanted(world)``; else ``build()`` (which writes it
    there) under a lock next to ``root``, so concurrent callers wait instead of building twice."""
    return reuse_or_build(root, wanted, build, load_world)
