# Write the report half of the quality table's dev examples (--limit 500 --half report) of a task
# as its own data folder, rows in order, with the task's prompt.txt, so that `run --limit N` on it
# decodes the first N report-half examples.
import json, shutil, sys
from pathlib import Path
from adafuse_lab.tasks import get_task
from adafuse_lab.runs import select_half
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for name in sys.argv[3:]:
    task = get_task(name)
    loaded = task.load(source="local", data_dir=src, limit=500, split="dev")
    rep = select_half(list(loaded), "report")
    raw = (src / name / "dev.jsonl").read_text(encoding="utf-8").splitlines()
    out = dst / name
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / name / "prompt.txt", out / "prompt.txt")
    ids = []
    with open(out / "dev.jsonl", "w", encoding="utf-8") as f:
        for ex in rep:
            i = int(ex.id.rsplit("-", 1)[1])
            row = json.loads(raw[i])
            assert row["question"] == ex.question
            f.write(raw[i] + "\n")
            ids.append(ex.id)
    (out / "source_ids.json").write_text(json.dumps({"source": str(src / name / "dev.jsonl"), "dropped_demo_leaks": loaded.dropped, "ids": ids}, indent=0))
    print(name, len(rep), ids[0], ids[-1], "dropped", loaded.dropped)
