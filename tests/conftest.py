import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

# the fuzz layer is reproducible by default (the same generated cases every run, so CI never fails
# on a case nobody can replay); HYPOTHESIS_PROFILE=hunt draws new cases each run
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("sjunet", derandomize=True, print_blob=True)
_hypothesis_settings.register_profile("hunt", derandomize=False, print_blob=True)
_hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "sjunet"))

SHARED_DATA = Path(os.environ.get("SJUNET_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (set SJUNET_DATA to the shared/data directory)")
    return SHARED_DATA


def pytest_terminal_summary(terminalreporter):
    """Print the fuzz layer's size: cases generated per file reader in this run."""
    import sys

    fuzzing = sys.modules.get("fuzzing")  # imported by the fuzz tests as `from fuzzing import ...`
    if fuzzing is None:
        return
    CASES = fuzzing.CASES
    if CASES:
        total = sum(CASES.values())
        terminalreporter.write_line("fuzz layer: " + ", ".join(f"{k} {v}" for k, v in sorted(CASES.items()))
                                    + f" — {total} hostile/malformed files: refused in one line, or read correctly where the mutation was harmless")
