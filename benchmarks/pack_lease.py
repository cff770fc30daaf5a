"""Pack a lease's work folder into OUT, within what comes back from the device (8 files of 16 MiB).

    python benchmarks/pack_lease.py /root/work "$OUT"

- results.tgz: everything but run directories' samples (logs, summaries, tables, tune files,
  bench JSONs, results.json and config.json of every run);
- runs_without_traces.tgz: every run directory (config, results, samples) with each sample's
  trace set to null: unpacked into a lease's work folder, the runs resume (RESUME=);
- traces.tgz.NN: the AdaFuse runs' samples with their traces, cut into 15 MiB parts
  (cat traces.tgz.* | tar xz), as many as fit in the remaining files.
"""
from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

PART = 15 * 2**20
MAX_FILES = 8


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def main() -> None:
    work, out = Path(sys.argv[1]), Path(sys.argv[2])
    # each file once, also where an ensemble's runs/ is a link to the shared one
    # (the checks' own runs under bench/ stay out: their summaries are in bench/*.json, and their
    # 1280-example samples would crowd the quality traces out)
    found = [p for p in work.rglob("samples.jsonl") if p.relative_to(work).parts[0] != "bench"]
    samples = sorted({p.resolve(): p for p in found}.values(), key=lambda p: p.resolve())
    samples = [p.resolve() for p in samples]
    work = work.resolve()
    with tarfile.open(out / "results.tgz", "w:gz") as tar:
        for p in sorted({q.resolve() for q in work.rglob("*")}):
            if p.is_file() and p.name != "samples.jsonl" and "/plan/" not in str(p) and not p.name.startswith(".") \
                    and p.stat().st_size < 4 * 2**20:
                tar.add(p, arcname=str(p.relative_to(work)))
    with tarfile.open(out / "runs_without_traces.tgz", "w:gz") as tar:  # also what RESUME= of lease_quality.sh takes
        for p in samples:
            for extra in ("config.json", "results.json"):
                if (p.parent / extra).is_file():
                    tar.add(p.parent / extra, arcname=str((p.parent / extra).relative_to(work)))
            lines = [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
            data = "".join(json.dumps({**r, "trace": None}) + "\n" for r in lines).encode()
            add_bytes(tar, str(p.relative_to(work)), data)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in samples:
            cfg = p.parent / "config.json"
            if cfg.is_file() and json.loads(cfg.read_text()).get("method") == "adafuse":
                tar.add(p, arcname=str(p.relative_to(work)))
    data = buf.getvalue()
    parts = [data[i:i + PART] for i in range(0, len(data), PART)]
    room = MAX_FILES - 2
    for i, part in enumerate(parts[:room]):
        (out / f"traces.tgz.{i:02d}").write_bytes(part)
    print(f"{len(samples)} run(s); traces {len(data) / 2**20:.1f} MiB in {len(parts)} part(s)"
          + (f", only {room} fit: the traces are cut short" if len(parts) > room else ""))


if __name__ == "__main__":
    main()
