"""``sweeps.trim``: freed heap handed back to the OS every N ended trials, in a real process."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap

import pytest

from sweeps.trim import ReleaseFreedMemory, malloc_trim

needs_glibc = pytest.mark.skipif(malloc_trim() is None, reason="no malloc_trim in this libc")

# A fragmented heap: 300 MB of malloc-sized objects (over pymalloc's 512-byte limit), freed
# but for one in 64, which keeps glibc from trimming the heap's top by itself. Then the
# callback sees `ended` trials end; the RSS after each phase is printed.
_CHILD = textwrap.dedent(
    """
    import sys
    from sweeps.trim import ReleaseFreedMemory

    def rss_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    every, ended = int(sys.argv[1]), int(sys.argv[2])
    blocks = [bytes(1000) + bytes([i % 251]) for i in range(300_000)]
    kept = blocks[::64]
    del blocks
    before = rss_mb()
    callback = ReleaseFreedMemory(every=every)
    for _ in range(ended):
        callback.on_trial_complete(0, [], None)
    print(before, rss_mb(), len(kept))
    """
)


def _rss_before_after(every: int, ended: int) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(every), str(ended)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    return float(out[0]), float(out[1])


@needs_glibc
def test_the_heap_is_trimmed_once_every_trials_have_ended():
    before, after = _rss_before_after(every=5, ended=5)
    assert before - after > 100, (before, after)


@needs_glibc
def test_nothing_is_trimmed_before_every_trials_have_ended():
    before, after = _rss_before_after(every=5, ended=4)
    assert abs(before - after) < 20, (before, after)


def test_it_pickles_with_its_count_into_tunes_experiment_state():
    callback = ReleaseFreedMemory(every=3)
    callback.on_trial_complete(0, [], None)
    copy = pickle.loads(pickle.dumps(callback))  # noqa: S301 (our own bytes)
    assert (copy.every, copy.ended) == (3, 1)


def test_a_count_below_one_is_refused():
    with pytest.raises(ValueError, match="every must be at least 1, but got 0"):
        ReleaseFreedMemory(every=0)
