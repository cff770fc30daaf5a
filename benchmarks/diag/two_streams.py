"""Would two members' forwards run faster side by side on two CUDA streams than one after the other?

Engine v8 spends about 14 ms per AdaFuse step in the two members' forwards, one after the other
on one stream, while one forward of ~1,000 tokens leaves the GPU far from busy (BENCHMARKS.md,
engine v8). This measures the most that running them on two streams can save, before the engine
is changed for it: each member's forward of T new tokens per row over a StaticCache of B rows x L
prompt tokens, captured once as a CUDA graph, then replayed N times
  serial      A then B on the current stream
  concurrent  A on one stream and B on another, both joined before the next step
with the host waiting for the GPU after every step (as the engine reads its results each step).

    python benchmarks/diag/two_streams.py MEMBER_A MEMBER_B [--batch 64] [--prompt 1500] [--tokens 16] [--steps 64] [--out F]
"""
import argparse
import json
import sys
import time

import torch


@torch.inference_mode()
def captured_forward(model, batch: int, prompt: int, tokens: int):
    """A replayable forward of `tokens` new tokens per row after a prefilled prompt."""
    from transformers import StaticCache

    g = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(100, 1000, (batch, prompt), generator=g).cuda()
    cache = StaticCache(config=model.config, max_cache_len=prompt + tokens)
    model(ids, past_key_values=cache, cache_position=torch.arange(prompt, device="cuda"), use_cache=True,
          logits_to_keep=1)
    new = ids[:, :tokens].clone()
    pos = torch.arange(prompt, prompt + tokens, device="cuda")
    # an explicit 4-D mask, as the engine passes: the model builds none inside the captured graph
    cols = torch.arange(prompt + tokens, device="cuda")
    mask = (cols[None, :] <= pos[:, None])[None, None].expand(batch, 1, tokens, prompt + tokens)
    step = lambda: model(new, attention_mask=mask, past_key_values=cache, cache_position=pos,
                         position_ids=pos[None].expand(batch, tokens), use_cache=True).logits
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph
        step(), step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    torch.cuda.synchronize()
    return graph


def ms_per_step(graphs, streams, steps: int) -> float:
    main = torch.cuda.current_stream()
    for i in range(steps + 2):  # two untimed steps first
        if i == 2:
            torch.cuda.synchronize()
            start = time.perf_counter()
        for graph, stream in zip(graphs, streams):
            if stream is None:
                graph.replay()
            else:
                stream.wait_stream(main)
                with torch.cuda.stream(stream):
                    graph.replay()
        for stream in streams:
            if stream is not None:
                main.wait_stream(stream)
        torch.cuda.synchronize()  # the engine reads each step's results on the host
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("members", nargs=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=1500)
    ap.add_argument("--tokens", type=int, default=16, help="new tokens per row in each forward")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--out")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("two_streams.py: needs a CUDA device (it times CUDA streams)")
    from adafuse_lab.models import load_session

    res = {"members": a.members, "batch": a.batch, "prompt": a.prompt, "tokens": a.tokens, "steps": a.steps,
           "device": torch.cuda.get_device_name(), "torch": torch.__version__}
    try:
        graphs = [captured_forward(load_session(m, device="cuda", dtype=torch.bfloat16).model.eval(),
                                   a.batch, a.prompt, a.tokens) for m in a.members]
    except Exception as e:  # say why, in the result file too
        res["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        report(res, a.out)
        sys.exit(1)
    for name, g in zip(a.members, graphs):
        res[f"alone_ms {name}"] = round(ms_per_step([g], [None], a.steps), 3)
    res["serial_ms"] = round(ms_per_step(graphs, [None, None], a.steps), 3)
    res["concurrent_ms"] = round(ms_per_step(graphs, [torch.cuda.Stream(), torch.cuda.Stream()], a.steps), 3)
    res["concurrent_over_serial"] = round(res["concurrent_ms"] / res["serial_ms"], 3)
    report(res, a.out)


def report(res: dict, out: str | None) -> None:
    print(json.dumps(res))
    if out:
        open(out, "w").write(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
