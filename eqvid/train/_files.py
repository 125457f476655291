"""Writing a run's small files so that a kill never leaves them half written."""

import os
import pathlib


def write_atomic(path: str | pathlib.Path, text: str) -> None:
    """Replace `path` with `text` in one step: write a temporary file beside it,
    flush it to disk, then rename it over `path` (a crash leaves the old file or the
    new one, never a truncated one)."""
    path = pathlib.Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
