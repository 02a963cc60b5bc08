"""The output directories of `stackalign run` and `stackalign train`: one writer each, and one configuration.

Both kinds of directory hold ``config.json`` (the resolved recipe) and refuse, once they hold work, a recipe or
a world that differs from the one the work was done with (:func:`read_config`, :func:`world_identity`,
:func:`check_world_identity`); a directory whose set-up failed before any work never blocks the corrected
recipe. What "work" is and which differences matter is each command's own (``runner.run``, ``training.run``).

One writer per directory: the lock that `stackalign run` and `stackalign train` hold on their `--out`.

The lock is a file, `DIR/.stackalign.lock`, created with ``O_CREAT | O_EXCL`` (exactly one process can create
it) and holding the writer's process id. A second process that finds it, while that process is alive, stops with
an error naming the directory and the holder's pid; a lock whose process is gone (killed with ``kill -9``, or
the machine restarted) is stale and taken over. The holder removes it when it is done, on an error too.

    with DirLock(out, "run directory"):
        ...  # write rows, checkpoints, summary.json
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from stackalign.recipe_base import RecipeError
from stackalign.store import write_json_atomic

__all__ = [
    "LOCK_NAME",
    "DirBusy",
    "DirError",
    "DirLock",
    "check_world_identity",
    "holds_work",
    "is_disk_full",
    "no_space_message",
    "read_config",
    "world_identity",
]

LOCK_NAME = ".stackalign.lock"

_HELD: dict[str, int] = {}  # lock files this process holds -> nesting depth (a holder may lock again)


class DirError(ValueError):
    """A directory that cannot be used (read-only, not a directory)."""


class DirBusy(DirError):
    """Another live process holds the directory's lock."""


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


class DirLock:
    """Exclusive ownership of `directory` (created if missing) by this process, as a context manager."""

    def __init__(self, directory: str | Path, what: str = "directory"):
        self.directory = Path(directory)
        self.what = what
        self.path = self.directory / LOCK_NAME

    def acquire(self) -> DirLock:
        if self.directory.exists() and not self.directory.is_dir():
            raise DirError(f"--out: {str(self.directory)!r} is a file, not a directory")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DirError(f"--out: cannot create {str(self.directory)!r} ({e.strerror})") from None
        key = str(self.path.resolve())
        if key in _HELD:
            _HELD[key] += 1
            return self
        for _ in range(3):  # a stale lock removed by us (or by another process) -> create again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_pid(self.path)
                if holder is not None and holder != os.getpid() and _alive(holder):
                    raise DirBusy(
                        f"{self.directory}: another stackalign process (pid {holder}) is writing to this "
                        f"{self.what}; wait for it to finish, or use another --out (if no process {holder} "
                        f"is running, delete {self.path})"
                    ) from None
                # stale (its process is gone, or a half-written lock): take it over, unless it changed meanwhile
                if _read_pid(self.path) == holder:
                    try:
                        self.path.unlink()
                    except FileNotFoundError:
                        pass
                continue
            except OSError as e:
                raise DirError(
                    f"{self.directory}: cannot write to this {self.what} ({e.strerror}); use another --out"
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            _HELD[key] = 1
            return self
        raise DirBusy(f"{self.directory}: could not take the {self.what}'s lock {self.path}; try again")

    def release(self) -> None:
        key = str(self.path.resolve())
        depth = _HELD.get(key, 0)
        if depth > 1:
            _HELD[key] = depth - 1
            return
        _HELD.pop(key, None)
        if _read_pid(self.path) == os.getpid():
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def no_space_message(e: OSError, directory: str | Path) -> str | None:
    """ "no space left on DIR ..." for a full disk (ENOSPC, EDQUOT), else None."""
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return (
            f"no space left on {directory} ({e.strerror}); free some space and run the same command again: "
            "the directory keeps what was finished and resumes"
        )
    return None


def is_disk_full(e: BaseException) -> bool:
    """Whether `e` means the disk is full: ENOSPC/EDQUOT, or torch.save's own words for a short write."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1))
    text = str(e)
    return isinstance(e, RuntimeError) and ("unexpected pos" in text or "file write failed" in text)


# ------------------------------------------------------------------------ one configuration per directory


def read_config(path: Path, what: str) -> dict:
    """A directory's ``config.json`` (of a ``what``: "run", "training"); a garbled file is an error naming it."""
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecipeError(f"{path}: not a readable {what} configuration ({type(e).__name__}: {e})") from None
    if not isinstance(cfg, dict):
        raise RecipeError(f"{path}: not a {what} configuration (expected a JSON object)")
    return cfg


def holds_work(out: Path, config_files: tuple[str, ...] = ("config.json", "world.json")) -> bool:
    """Whether a directory holds anything but its configuration files and its lock (rows, metrics, checkpoints,
    a model...): a directory whose set-up failed holds none, and takes the corrected recipe."""
    names = {*config_files, LOCK_NAME}
    return any(p.is_file() and p.name not in names and ".tmp" not in p.name for p in out.rglob("*"))


def world_identity(manifest: dict) -> str:
    """A world's identity: the sha256 of its manifest (its parameters and every file's sha256) without the
    build's timing, so a world rebuilt in place with other settings is a different world."""
    content = {k: v for k, v in manifest.items() if k != "build"}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def check_world_identity(out: Path, world: Any, what: str = "training") -> None:
    """Keep ``DIR/world.json`` (the world's :func:`world_identity`); a directory holding work refuses a world
    that changed since (a world rebuilt in place with other settings). A world without a manifest is not
    recorded."""
    manifest = getattr(world, "manifest", None)
    if not isinstance(manifest, dict):
        return
    path = out / "world.json"
    new = world_identity(manifest)
    if path.is_file() and holds_work(out):
        try:
            old = json.loads(path.read_text()).get("world_id")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
            raise RecipeError(f"{path}: not a readable world identity ({type(e).__name__})") from None
        if old != new:
            raise RecipeError(
                f"{out} holds {what} on another world (world_id: {str(old)[:12]}... -> {new[:12]}..., "
                f"{path}): the world at {getattr(world, 'root', '?')} changed; use another --out"
            )
    write_json_atomic(path, {"world_id": new, "root": str(getattr(world, "root", ""))})
