"""Files that a format writes in pieces, image after image: text appended to a temporary
file beside the target, renamed over it by `commit` (after an error nothing is left)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, TextIO

from engine.files import atomic_path


class StreamedFile:
    """A text file that appears under `path` only once `commit` is called."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stack = contextlib.ExitStack()
        temporary = self._stack.enter_context(atomic_path(path))
        handle = open(temporary, "w", encoding="utf-8")  # noqa: SIM115 - closed by the stack
        self.handle: TextIO = self._stack.enter_context(handle)

    def write(self, text: str) -> None:
        self.handle.write(text)

    def commit(self) -> Path:
        self._stack.close()  # closes the file, then renames it into place
        return self.path

    def abandon(self) -> None:
        self._stack.__exit__(RuntimeError, RuntimeError("abandoned"), None)


class JsonArrayFile(StreamedFile):
    """A JSON array written one item at a time: `prefix` (the text up to and including its
    opening bracket), the items, then the suffix given to `commit` (its closing bracket and
    whatever follows)."""

    def __init__(self, path: Path, *, prefix: str = "[") -> None:
        super().__init__(path)
        self.count = 0
        self.write(prefix)

    def append(self, item: Any) -> None:
        self.write(("," if self.count else "") + "\n" + dumps(item))
        self.count += 1

    def commit(self, suffix: str = "]") -> Path:
        self.write("\n" + suffix)
        return super().commit()


def dumps(value: Any) -> str:
    """Compact JSON (NaN refused)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)
