"""The sandbox world as a value: paths, prompts, the gold utility, and the cached default world."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stackalign.cache import NAMED_WORLDS, default_cache_root
from stackalign.worlds import text as T
from stackalign.worlds.build import WORLD_FORMAT, WORLD_VERSION, build_world_dir, resolve_params, sha256_file


@dataclass
class World:
    """A built sandbox world (see the README.md in its directory).

    ``gold(prompt, response)`` is the user's exact utility (``stackalign.worlds.text.GOLD_DOC``);
    ``gold_judge(prompt, a, b)`` is +1 / 0 / −1 as ``a`` is better / tied / worse by gold.
    Prompts are full policy prompts (``"User: ...\\nAssistant:"``); responses are the continuations.
    """

    root: Path
    policy_dir: Path
    reward_dir: Path
    manifest: dict
    train_prompts: list[str]
    val_prompts: list[str]
    test_prompts: list[str]
    stop_strings: list[str] = field(default_factory=lambda: list(T.STOP_STRINGS))
    max_new_tokens: int = 64
    eos_token: str = T.EOS_TOKEN
    preferred_threshold: float = T.PREFERRED_THRESHOLD

    def gold(self, prompt: str, response: str) -> float:
        return T.gold_utility(prompt, response)

    def gold_judge(self, prompt: str, a: str, b: str) -> int:
        return T.gold_judge(prompt, a, b)

    def gold_preference(self, prompt: str, a: str, b: str) -> float:
        """p(a ≻ b | prompt) under the world's user population (``preference.PREFERENCE_DOC``), in [0, 1]."""
        from stackalign.worlds.preference import gold_preference

        return gold_preference(prompt, a, b)

    @property
    def has_follower_format(self) -> bool:
        return "follower_format" in self.manifest

    def follower_prompt(self, prompt: str, previous: str) -> str:
        """The follower's prompt (``text.make_follower_prompt``); ValueError for a world without the format."""
        if not self.has_follower_format:
            raise ValueError(f"world at {str(self.root)!r} has no follower format; rebuild it")
        return T.make_follower_prompt(prompt, previous)

    def gold_breakdown(self, prompt: str, response: str) -> T.GoldBreakdown:
        return T.gold_breakdown(prompt, response)

    def gold_reward(self):
        """The gold utility as a :class:`stackalign.models.CallableReward`."""
        from stackalign.models import CallableReward

        return CallableReward(T.gold_utility, name="gold")

    def load_policy(self, **kwargs: Any):
        from stackalign.models import load_policy

        return load_policy(self.policy_dir, **kwargs)

    def load_reward_model(self, **kwargs: Any):
        from stackalign.models import load_reward_model

        return load_reward_model(self.reward_dir, **kwargs)

    @property
    def figures(self) -> dict:
        return self.manifest.get("figures", {})

    @property
    def params(self) -> dict:
        return self.manifest.get("params", {})


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
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"world directory not found: {str(root)!r}")
    mpath = root / "manifest.json"
    if not mpath.is_file():
        raise FileNotFoundError(
            f"no manifest.json in {str(root)!r}: not a world (build one with `stackalign world build`)"
        )
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"world manifest {str(mpath)!r} is not valid JSON: {e}") from None
    if manifest.get("format") != WORLD_FORMAT:
        raise ValueError(f"{str(mpath)!r} is not a stackalign world manifest")
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


def verify_files(root: Path, manifest: dict) -> None:
    """ValueError naming the first file of ``manifest["files"]`` that is missing or whose sha256 differs."""
    for rel, digest in manifest.get("files", {}).items():
        f = root / rel
        if not f.is_file():
            raise ValueError(f"world file missing: {str(f)!r}")
        if sha256_file(f) != digest:
            raise ValueError(f"world file changed since the build (sha256 mismatch): {str(f)!r}")


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
    import fcntl

    def usable() -> World | None:
        try:
            w = load_world(root)
        except (FileNotFoundError, ValueError, KeyError, json.JSONDecodeError):
            return None
        return w if wanted(w) else None

    w = usable()
    if w is not None:
        return w
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            w = usable()  # someone else may have built it while we waited
            if w is None:
                if root.exists() and not (root / "manifest.json").is_file():
                    import shutil

                    shutil.rmtree(root)
                w = build()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return w
