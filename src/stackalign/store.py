"""Crash-safe files shared by every layer: append-only JSONL rows and atomic JSON writes.

Append-only JSONL storage that survives `kill -9` at any moment.

Each finished row is one line, written with a single `write` of the full line and flushed + fsynced before
the next row starts. On open, a last line without its newline (a write cut off by a crash) is cut away, so
every row in the file is whole; rows are keyed, so a restarted run skips what is done and never writes a
row twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path


class JsonlStore:
    def __init__(self, path: str | Path, key: tuple[str, ...] = ("method", "prompt_id")):
        self.path = Path(path)
        self.key = key
        self.rows: list[dict] = []
        self._done: set[tuple] = set()
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1  # everything after the last newline is a torn write
        if end < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(end)
        for lineno, line in enumerate(data[:end].splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{self.path}:{lineno}: corrupt row ({e})") from None
            if not isinstance(row, dict) or any(k not in row for k in self.key):
                raise ValueError(
                    f"{self.path}:{lineno}: corrupt row (expected a JSON object with {', '.join(self.key)})"
                )
            k = self._key(row)
            if k in self._done:  # tolerate duplicates from foreign edits; keep the first
                continue
            self._done.add(k)
            self.rows.append(row)

    def _key(self, row: dict) -> tuple:
        return tuple(row.get(k) for k in self.key)

    def done(self, **key) -> bool:
        return tuple(key.get(k) for k in self.key) in self._done

    def append(self, rows: Iterable[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            for row in rows:
                k = self._key(row)
                if k in self._done:
                    continue
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
                self._done.add(k)
                self.rows.append(row)

    def rewrite(self, rows: list[dict]) -> None:
        """Replace the file's rows with `rows` atomically (a temporary file renamed over it)."""
        tmp = self.path.with_suffix(f"{self.path.suffix}.tmp{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self.rows, self._done = [], set()
        self._load()


def write_json_atomic(path: str | Path, obj, *, indent: int | None = 2) -> None:
    """Write JSON to a temporary file and rename it over `path` (never a half-written file).

    The temporary name carries the process id, so two processes writing the same path cannot interleave."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f"{path.suffix}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
