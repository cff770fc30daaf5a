"""Do member turns give the answers of the schedule without them, on real members?

Decodes the same prompts (GSM8K dev questions after the paper's demonstrations) with
`member_turns` off and on, with prefetch switched on as on a GPU, and prints how many answers
agree. The rounds are the same either way; the forwards differ in shape, so in float32 the
answers should agree, and in bf16 a few may differ by rounding (as between batch sizes).

    python benchmarks/diag/turns_same_answers.py [--members qwen2.5-coder-0.5b,smollm2-135m] [--prompts 8] [--tokens 48] [--dtype float32]
"""
import argparse
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from host_profile import prompts  # noqa: E402

from adafuse_lab.decoding import DecodeConfig, decode  # noqa: E402
from adafuse_lab.decoding.runtime import streams  # noqa: E402
from adafuse_lab.models import load_session  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", default="qwen2.5-coder-0.5b,smollm2-135m")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--shots", type=int, default=1)
    ap.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: the device's)")
    args = ap.parse_args()
    streams.PREFETCH_DEVICES = streams.PREFETCH_DEVICES | {"cpu"}  # the GPU's path of reading scores
    members = [load_session(m, dtype=args.dtype) for m in args.members.split(",")]
    batch = prompts(args.prompts, args.shots)
    texts = {}
    for turns in (False, True):
        cfg = DecodeConfig(max_new_tokens=args.tokens, batch_size=len(batch), member_turns=turns)
        texts[turns] = [o.text for o in decode("adafuse", members, batch, cfg)]
        digest = hashlib.sha256(json.dumps(texts[turns]).encode()).hexdigest()[:12]
        print(f"member_turns={turns}: answers {digest}")
    same = sum(a == b for a, b in zip(texts[False], texts[True]))
    print(f"{same} of {len(batch)} answers the same ({args.members}, {members[0].dtype}, "
          f"{args.tokens} tokens, {members[0].device})")


if __name__ == "__main__":
    main()
