import time, torch, dataclasses
from adafuse_lab.models import load_session
from adafuse_lab.tasks import get_task
from adafuse_lab.decoding import decode, DecodeConfig
ss=[load_session(n) for n in ("qwen2.5-coder-0.5b","smollm2-135m")]
t=get_task("gsm8k"); ex=t.load(source="local", data_dir=".gpu-extra/data", limit=16)
P=[t.prompt(e) for e in ex]
out={}
for g in (False, True):
    cfg=DecodeConfig(max_new_tokens=64, batch_size=16, cuda_graphs=g)
    decode("adafuse", ss, P[:2], dataclasses.replace(cfg, max_new_tokens=4))
    torch.cuda.synchronize(); t0=time.time()
    out[g]=decode("adafuse", ss, P, cfg)
    torch.cuda.synchronize(); print("graphs", g, round(time.time()-t0,2), "s", flush=True)
same=sum(a.text==b.text for a,b in zip(out[False], out[True]))
print("identical texts", same, "of", len(P))
for a,b in zip(out[False], out[True]):
    if a.text!=b.text: print(repr(a.text[:120])); print(repr(b.text[:120])); break
