"""Realistic, seeded shop traffic for the four input topics, with ground truth.

    sim = simulators.generate(("double11", "card_testing"), seed=7, duration_ms=2 * HOUR)
    for event in sim:            # SimEvent(topic, key, value, ts), in event-time order
        ...
    sim.truth                    # ground truth, complete once iteration has ended

See `simulators.cli` for `shopstream simulate` and `simulators.testing` for
feeding a Bytewax `TestingSource`.
"""

from simulators.engine import DEFAULT_START_MS, SimEvent, Simulation, generate
from simulators.profile import PROFILE, ShopProfile
from simulators.scenarios import SCENARIOS

__all__ = ["DEFAULT_START_MS", "PROFILE", "SCENARIOS", "ShopProfile", "SimEvent", "Simulation", "generate"]
