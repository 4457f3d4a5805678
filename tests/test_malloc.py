"""tune_malloc, checked in fresh processes (it changes the whole process's allocator)."""
import subprocess
import sys

import pytest

from tbkeras.malloc import tune_malloc

# Allocate and free a 64 MiB block over and over (a batch of clips, step after step) and count the
# page faults of the repeats: with glibc's defaults each one is a fresh mmap; tuned, the heap reuses it.
_SCRIPT = """
import resource, sys
import numpy as np
from tbkeras.malloc import tune_malloc
applied = tune_malloc() if sys.argv[1] == "tuned" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = np.ones(64 << 20, np.uint8); del block
before = faults()
for _ in range(5):
    block = np.ones(64 << 20, np.uint8); del block
print(int(applied), faults() - before)
"""


def _faults(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", _SCRIPT, mode], check=True, capture_output=True, text=True)
    applied, faults = out.stdout.split()
    return bool(int(applied)), int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_tuned_malloc_reuses_freed_blocks_instead_of_faulting_them_in_again():
    applied, tuned = _faults("tuned")
    _, default = _faults("default")
    assert applied
    assert default > 100  # the repeats do fault in by default, else this test shows nothing
    assert tuned * 10 < default


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="arena_max"):
        tune_malloc(arena_max=0)
    with pytest.raises(ValueError, match="mmap_threshold"):
        tune_malloc(mmap_threshold=0)
