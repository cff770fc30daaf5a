"""Engine counters per member model (by id), read by bench: forwards, tokens fed, token slots
computed (pads included), KV compactions, seconds spent in prefill and in CUDA-graph captures (and their number),
and the GPU seconds of the model's forwards (`model_gpu_s`: what the decode wall time has
beyond it is the host's planning and the small operations around each forward)."""
import contextlib
import time
from collections import Counter

COUNTS: Counter = Counter()
HOST: Counter = Counter()  # seconds of the host's work by phase of a step (host_phase), summed over members
TIMED: list = []  # (model key, start event, end event) around forwards not yet added to COUNTS


def settle(wait: bool = True) -> None:
    """Add the GPU time of the timed forwards to COUNTS: all of them (waiting for the last), or
    without waiting only those already done (so a long run keeps few events alive)."""
    left = []
    for key, start, end in TIMED:
        if wait or end.query():
            end.synchronize()
            COUNTS[key, "model_gpu_s"] += start.elapsed_time(end) / 1000
        else:
            left.append((key, start, end))
    TIMED[:] = left


@contextlib.contextmanager
def host_phase(name: str):
    """Add the wall time inside to HOST[name]: where a step's host work goes, without a
    profiler's overhead (bench reports it as host_phases_s). A phase that reads results from
    the GPU includes its wait for them."""
    start = time.perf_counter()
    try:
        yield
    finally:
        HOST[name] += time.perf_counter() - start
