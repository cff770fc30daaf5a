"""Engine counters per member model (by id), read by bench: forwards, tokens fed, token slots
computed (pads included), KV compactions, and seconds spent in prefill and in CUDA-graph captures."""
from collections import Counter

COUNTS: Counter = Counter()
