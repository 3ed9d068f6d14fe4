"""Versioned model checkpoints on disk: save, list, load the latest.

Any picklable model (a river pipeline, or a wrapper around one) under a name:
`DIR/{name}/v{version:06d}.pkl` plus `DIR/{name}/latest.json` naming the newest
version and what the caller recorded about it (labels learned, the data it was
trained on). Writes go to a temporary file renamed into place, so a crash never
leaves a half-written checkpoint and `latest.json` only ever names a complete one.
Versions only grow; older ones are kept (up to `keep`) so a bad model can be rolled
back by loading an earlier version.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_VERSION_FILE = re.compile(r"v(\d{6,})\.pkl")


@dataclass(frozen=True)
class Checkpoint:
    name: str
    version: int
    model: Any
    meta: dict


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


class ModelStore:
    def __init__(self, root: Path, keep: int = 10):
        self.root = Path(root)
        self.keep = keep

    def versions(self, name: str) -> list[int]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        found = (_VERSION_FILE.fullmatch(path.name) for path in folder.iterdir())
        return sorted(int(match.group(1)) for match in found if match)

    def save(self, name: str, model: Any, meta: dict | None = None) -> int:
        """Write `model` as the next version and make it the latest; returns the version."""
        version = (self.versions(name) or [0])[-1] + 1
        folder = self.root / name
        _write_atomically(folder / f"v{version:06d}.pkl", pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))
        _write_atomically(folder / "latest.json", json.dumps({"version": version, "meta": meta or {}}).encode())
        for old in self.versions(name)[: -self.keep]:
            (folder / f"v{old:06d}.pkl").unlink(missing_ok=True)
        return version

    def load(self, name: str, version: int | None = None) -> Checkpoint | None:
        """The given version, or the latest; None when there is none."""
        folder = self.root / name
        meta: dict = {}
        if version is None:
            pointer = folder / "latest.json"
            if not pointer.exists():
                return None
            latest = json.loads(pointer.read_text())
            version, meta = latest["version"], latest.get("meta", {})
        path = folder / f"v{version:06d}.pkl"
        if not path.exists():
            return None
        return Checkpoint(name, version, pickle.loads(path.read_bytes()), meta)
