"""Property tests draw the same examples on every run, so the test command gives the same
verdict twice on the same tree (CI included). `HYPOTHESIS_PROFILE=explore` searches afresh."""
import os

from hypothesis import settings

settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))
