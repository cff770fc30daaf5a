# A data folder holding a task's report-half rows from row START on (data/<task>/ as mk_subset.py
# wrote it), so that `run --limit N` on it decodes report-half rows START .. START+N-1:
#   python benchmarks/results/eos_fix_cpu/mk_slice.py data data_from80 80 triviaqa nq
import json, shutil, sys
from pathlib import Path
src, dst, start = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
for name in sys.argv[4:]:
    out = dst / name
    out.mkdir(parents=True, exist_ok=True)
    lines = (src / name / "dev.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (out / "dev.jsonl").write_text("".join(lines[start:]), encoding="utf-8")
    shutil.copyfile(src / name / "prompt.txt", out / "prompt.txt")
    ids = json.loads((src / name / "source_ids.json").read_text())
    ids["ids"], ids["from"] = ids["ids"][start:], f"{src / name} rows {start}.."
    (out / "source_ids.json").write_text(json.dumps(ids, indent=0))
    print(name, len(lines) - start, ids["ids"][0])
