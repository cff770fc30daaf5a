"""Engine counters per member model (by id), read by bench: forwards, tokens fed, token slots
computed (pads included), KV compactions, seconds spent in prefill (GPU seconds on CUDA) and in
CUDA-graph captures (and their number), and the GPU seconds of the model's forwards (`model_gpu_s`: what the decode wall time has
beyond it is the host's planning and the small operations around each forward)."""
import contextlib
import time
from collections import Counter

import torch

COUNTS: Counter = Counter()
HOST: Counter = Counter()  # seconds of the host's work by phase of a step (host_phase), summed over members
TIMED: list = []  # (model key, counter, start event, end event) around GPU work not yet added to COUNTS


def gpu_timer(device):
    """CUDA events around GPU work, the start recorded now (gpu_time adds the span); None off CUDA."""
    if torch.device(device).type != "cuda":
        return None
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    return start, end


def gpu_time(key, name: str, timer) -> None:
    """The work queued since gpu_timer() ends here: its GPU time goes to COUNTS[key, name] once
    it is done (read by settle, not waited for now)."""
    timer[1].record()
    TIMED.append((key, name, *timer))
    if len(TIMED) > 512:
        settle(wait=False)


def settle(wait: bool = True) -> None:
    """Add the GPU time of the timed work to COUNTS: all of it (waiting for the last), or
    without waiting only what is already done (so a long run keeps few events alive)."""
    left = []
    for key, name, start, end in TIMED:
        if wait or end.query():
            end.synchronize()
            COUNTS[key, name] += start.elapsed_time(end) / 1000
        else:
            left.append((key, name, start, end))
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
