"""Versioned fraud model checkpoints on disk: written atomically, the newest restored.

Files are `fraud-model-v{version:06d}.pkl` in the model directory; a checkpoint
is written to a temporary file and renamed, so a crash mid-write never leaves a
half file under a checkpoint's name. The newest `keep` versions are kept.
A checkpoint holds the model and its thresholds, never payment or card data.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from operators.fraud_engine import ModelBundle, ModelCheckpoint

_NAME = re.compile(r"^fraud-model-v(\d+)\.pkl$")


class ModelStore:
    def __init__(self, directory: Path, keep: int = 5):
        self.directory = Path(directory)
        self.keep = keep

    def versions(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        found = (_NAME.match(path.name) for path in self.directory.iterdir())
        return sorted(int(match[1]) for match in found if match)

    def path(self, version: int) -> Path:
        return self.directory / f"fraud-model-v{version:06d}.pkl"

    def save(self, checkpoint: ModelCheckpoint) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.path(checkpoint.version)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".writing-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(checkpoint.data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        for old in self.versions()[: -self.keep]:
            self.path(old).unlink(missing_ok=True)
        return target

    def load_latest(self) -> ModelBundle | None:
        versions = self.versions()
        if not versions:
            return None
        with self.path(versions[-1]).open("rb") as f:
            bundle = pickle.load(f)
        if not isinstance(bundle, ModelBundle):
            raise ValueError(f"{self.path(versions[-1])} is not a fraud model checkpoint")
        return bundle


class _CheckpointPartition(StatelessSinkPartition[ModelCheckpoint]):
    def __init__(self, store: ModelStore):
        self._store = store

    def write_batch(self, items: list[ModelCheckpoint]) -> None:
        if items:  # only the newest of a batch matters
            self._store.save(max(items, key=lambda c: c.version))


class ModelCheckpointSink(DynamicSink[ModelCheckpoint]):
    def __init__(self, directory: Path):
        self._directory = Path(directory)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CheckpointPartition:
        return _CheckpointPartition(ModelStore(self._directory))
