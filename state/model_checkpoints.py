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
from typing import Any, Protocol

from bytewax.outputs import DynamicSink, StatelessSinkPartition

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

    def path(self, name: str, version: int) -> Path:
        return self.root / name / f"v{version:06d}.pkl"

    def save(self, name: str, model: Any, meta: dict | None = None) -> int:
        """Write `model` as the next version and make it the latest; returns the version."""
        return self.save_pickled(name, pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL), meta)

    def save_pickled(self, name: str, data: bytes, meta: dict | None = None) -> int:
        """`save` for a model pickled already (a flow pickles it when the checkpoint is due,
        so later learning cannot change it on its way to the disk)."""
        version = (self.versions(name) or [0])[-1] + 1
        folder = self.root / name
        _write_atomically(folder / f"v{version:06d}.pkl", data)
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


class PickledCheckpoint(Protocol):
    version: int  # the model's own version
    ts: int  # event time of the checkpoint
    data: bytes  # the pickled model


class _CheckpointPartition(StatelessSinkPartition[PickledCheckpoint]):
    def __init__(self, store: ModelStore, name: str):
        self._store = store
        self._name = name

    def write_batch(self, items: list[PickledCheckpoint]) -> None:
        if items:  # only the newest of a batch matters
            newest = max(items, key=lambda c: c.version)
            self._store.save_pickled(self._name, newest.data, {"model_version": newest.version, "ts": newest.ts})


class CheckpointSink(DynamicSink[PickledCheckpoint]):
    """Writes a flow's model checkpoints to `root/name/` as the store's next versions."""

    def __init__(self, root: Path, name: str):
        self._root = Path(root)
        self._name = name

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CheckpointPartition:
        return _CheckpointPartition(ModelStore(self._root), self._name)
