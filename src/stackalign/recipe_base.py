"""What run recipes (`stackalign run`) and train recipes (`stackalign train`) share, below both.

- :class:`RecipeError`, the error of a recipe: its message names the key;
- :func:`read_yaml`: a recipe file's YAML (duplicate keys and alias bombs refused, the file named in errors);
- :func:`apply_overrides`: ``key=value`` overrides with dotted paths (``generation.max_new_tokens=64``);
- the models section, the same in both: the ``world`` / ``policy`` / ``reward_model`` fields
  (:func:`world_field` ...), where each model comes from (:func:`policy_path`, :func:`reward_model_path`), the
  machine checks before anything loads (:func:`models_problems`) and the one way a recipe's ``world:`` becomes
  a world (:func:`load_recipe_world`).

Each recipe kind keeps its own sections (methods, evaluation, backend for runs; the algorithm's fields for
training) in ``stackalign.runner.recipe`` and ``stackalign.training.recipe``.
"""

from __future__ import annotations

import copy
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

from stackalign.cache import NAMED_WORLDS
from stackalign.config import RecipeError, clip

__all__ = [
    "MAX_RECIPE_BYTES",
    "MAX_YAML_NODES",
    "RecipeError",
    "apply_overrides",
    "device_problem",
    "load_recipe_world",
    "models_problems",
    "policy_field",
    "policy_path",
    "read_yaml",
    "reward_model_field",
    "reward_model_path",
    "safe_yaml",
    "world_field",
]


# ------------------------------------------------------------------------------------------ YAML files


MAX_RECIPE_BYTES = 1_000_000  # a recipe is a page of settings; anything larger is not one
MAX_YAML_NODES = 100_000  # YAML nodes after aliases are expanded (a few aliases can stand for billions)


class _StrictLoader(yaml.SafeLoader):
    """yaml.safe_load's loader with two refusals: a mapping with the same key twice (YAML's "last one wins"
    would silently drop the first, e.g. a whole `methods:` list), and aliases that expand to more than
    MAX_YAML_NODES nodes (an "alias bomb": a few hundred bytes that stand for gigabytes)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = (key_node.tag, key_node.value)
                line = key_node.start_mark.line + 1
                if key in first:
                    raise RecipeError(
                        f"{clip(key_node.value)}: duplicate key (lines {first[key]} and {line}); "
                        "YAML would keep only the last one"
                    )
                first[key] = line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node, memo: dict, limit: int) -> int:
    """How many nodes `node` stands for with every alias expanded (stops counting past `limit`)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a recursive alias counts once
    total = 1
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    else:
        children = []
    for child in children:
        total += _expanded_size(child, memo, limit)
        if total > limit:
            break
    memo[id(node)] = total
    return total


def safe_yaml(text: str, where: str = "recipe") -> Any:
    """`yaml.safe_load` that refuses duplicate keys and alias bombs (RecipeError naming `where`)."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}, MAX_YAML_NODES) > MAX_YAML_NODES:
            raise RecipeError(
                f"{where}: its YAML aliases expand to more than {MAX_YAML_NODES} values; write the values out"
            )
        return loader.construct_document(node)
    except RecipeError as e:
        msg = str(e)
        raise RecipeError(msg if msg.startswith(where) else f"{where}: {msg}") from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> Any:
    """A recipe file's YAML data; a missing, oversized or non-UTF-8 file, bad YAML, a duplicate key or an alias
    bomb is an error naming the file."""
    path = Path(path)
    try:
        size = path.stat().st_size if path.is_file() else None
    except OSError as e:  # a name too long, a directory without permission
        raise RecipeError(f"recipe {clip(str(path))}: {e.strerror}") from None
    if size is None:
        raise FileNotFoundError(f"recipe: no such file {clip(str(path))}")
    if size > MAX_RECIPE_BYTES:
        raise RecipeError(f"recipe {path}: {size} bytes; a recipe is at most {MAX_RECIPE_BYTES} bytes")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(f"recipe {path}: not UTF-8 text (byte {e.start} cannot be decoded)") from None
    try:
        return safe_yaml(text, where=f"recipe {path}")
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {path}: not valid YAML ({clip(str(e), 600)})") from None


# ------------------------------------------------------------------------------------- overrides


def _parse_value(text: str) -> Any:
    try:
        return safe_yaml(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides (value parsed as YAML; list items addressed by index)."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        parts = key.split(".")
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            where = ".".join(parts[: i + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise RecipeError(f"override {key}: no list item {where}")
                node = node[int(part)]
            else:
                node = node.setdefault(part, {})
            if not isinstance(node, dict | list):
                raise RecipeError(f"override {key}: {where} is not a mapping")
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise RecipeError(f"override {key}: no list item {last}")
            node[int(last)] = _parse_value(raw)
        else:
            node[last] = _parse_value(raw)
    return data


# ------------------------------------------------------------------------------------ the models section


def world_field() -> Any:
    return field(
        default="default",
        metadata={
            "help": "default (the cached sandbox world), smol (the cached smol world), a world directory, or null"
        },
    )


def policy_field() -> Any:
    return field(default=None, metadata={"help": "causal LM name or path; null = the world's policy"})


def reward_model_field() -> Any:
    return field(
        default=None,
        metadata={"help": "1-label sequence classifier name or path; null = the world's proxy reward model"},
    )


def load_recipe_world(world: str | None, *, progress: bool = True) -> Any:
    """The world a recipe's ``world:`` names: None for null, a cached named world (``default``, ``smol``, built
    on first use), or the world directory."""
    if world is None:
        return None
    from stackalign.worlds.world import load_world, named_world

    return named_world(world, progress=progress) if world in NAMED_WORLDS else load_world(world)


def policy_path(policy: str | None, world: Any) -> str:
    """The policy a recipe loads: its ``policy:``, else its world's."""
    if policy is not None:
        return policy
    if world is None:
        raise RecipeError("policy: needed (no world gives one)")
    return str(world.policy_dir)


def reward_model_path(reward_model: str | None, world: Any) -> str:
    """The reward model a recipe loads: its ``reward_model:``, else its world's proxy reward model."""
    if reward_model is not None:
        return reward_model
    if world is None:
        raise RecipeError("reward_model: needed (no world gives one)")
    return str(world.reward_dir)


def device_problem(device: str) -> str | None:
    """Why `device` (cpu, cuda, cuda:N, mps, xpu, xpu:N, auto) cannot be used on this machine, or None."""
    kind, _, index = device.partition(":")
    if kind in ("cpu", "auto"):
        return None
    import torch

    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    elif kind == "mps":
        count = int(bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()))
    elif kind == "xpu":
        xpu = getattr(torch, "xpu", None)
        count = xpu.device_count() if xpu is not None and xpu.is_available() else 0
    else:
        return f"unknown device {clip(device)}"
    if count == 0:
        return f"{device!r}: this machine has no {kind} device (torch {torch.__version__}); use cpu"
    if index and int(index) >= count:
        return f"{device!r}: this machine has {count} {kind} device(s), numbered from 0"
    return None


def local_path_problem(key: str, value: str | None, *, want_dir: bool) -> str | None:
    """Why ``value`` (a recipe field ``key``) is no usable local path, or None: a missing path that looks local
    (a hub name is checked when it loads), or a file where a directory is wanted."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.exists():
        return f"{key}: {value!r} is a file, expected a directory" if want_dir and not path.is_dir() else None
    from stackalign.models.loading import looks_like_local_path

    if looks_like_local_path(value):
        return f"{key}: no such {'directory' if want_dir else 'file'} {value!r}"
    return None


def world_problem(world: str | None) -> str | None:
    """Why a recipe's ``world:`` is no world, or None (named worlds are built on first use)."""
    if world is None or world in NAMED_WORLDS:
        return None
    path = Path(world).expanduser()
    if not path.is_dir():
        return f"world: no world directory at {clip(world)} (build one: stackalign world build)"
    if not (path / "manifest.json").is_file():
        return f"world: {clip(world)} is not a stackalign world (no manifest.json)"
    return None


def models_problems(
    world: str | None, device: str, policy: str | None, reward_model: str | None
) -> list[str]:
    """The machine checks of the models section, before anything loads: the world directory, the device, and
    the local policy and reward-model paths (one ``field: problem`` line each)."""
    why = device_problem(device)
    found = [
        world_problem(world),
        f"device: {why}" if why else None,
        local_path_problem("policy", policy, want_dir=True),
        local_path_problem("reward_model", reward_model, want_dir=True),
    ]
    return [p for p in found if p]
