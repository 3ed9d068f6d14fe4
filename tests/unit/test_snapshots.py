"""Snapshots of flow state: taken when asked for, restored as the state itself."""

from __future__ import annotations

import gc
import pickle

from state.snapshots import PickledState, collector_paused, restored


def test_a_snapshot_is_frozen_when_taken_and_restores_as_the_state():
    state = {"carts": [1, 2]}
    snapshot = PickledState.of(state)
    state["carts"].append(3)  # later changes must not reach the snapshot
    from_store = pickle.loads(pickle.dumps(snapshot))
    assert from_store == {"carts": [1, 2]} and type(from_store) is dict
    assert restored(snapshot) == {"carts": [1, 2]}  # handed back without the store


def test_restoring_nothing_or_plain_state_passes_it_through():
    assert restored(None) is None
    state = {"a": 1}
    assert restored(state) is state


def test_the_collector_is_paused_inside_and_restored_after():
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # a caller's own choice is kept
    finally:
        gc.enable()
