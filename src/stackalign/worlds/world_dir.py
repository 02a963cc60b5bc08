"""A world directory, whatever built it: the :class:`World` it loads as, its manifest, its files' check and
the build-once cache. Below both the sandbox world's loader (:mod:`.world`, whose ``load_world`` hands a smol
world's directory to :mod:`.smol`) and the smol world, so neither needs the other for these.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import stackalign.worlds.text as T
from stackalign.worlds.build import WORLD_FORMAT, sha256_file


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


def read_manifest(path: str | os.PathLike) -> tuple[Path, dict]:
    """The resolved directory and its world manifest. FileNotFoundError if the directory or its manifest is
    missing; ValueError if the manifest is no JSON or no stackalign world manifest."""
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
    return root, manifest


def verify_files(root: Path, manifest: dict) -> None:
    """ValueError naming the first file of ``manifest["files"]`` that is missing or whose sha256 differs."""
    for rel, digest in manifest.get("files", {}).items():
        f = root / rel
        if not f.is_file():
            raise ValueError(f"world file missing: {str(f)!r}")
        if sha256_file(f) != digest:
            raise ValueError(f"world file changed since the build (sha256 mismatch): {str(f)!r}")


def reuse_or_build(
    root: Path, wanted: Callable[[World], bool], build: Callable[[], World], load: Callable[[Path], World]
) -> World:
    """``load(root)`` if it succeeds and ``wanted`` the world; else ``build()`` (which writes it there) under a
    lock next to ``root``, so concurrent callers wait instead of building twice."""
    import fcntl

    def usable() -> World | None:
        try:
            w = load(root)
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
