"""Do two runs give the same samples? Compares two samples.jsonl files example by example.

Used to check that a device, a lease or a code change leaves decoding unchanged. Usage:

    python benchmarks/same_samples.py A/samples.jsonl B/samples.jsonl [--ignore-trace-key proposed]

prints, over the examples both files hold, how many have the same prediction, the same trace
and the same record, and the trace's numbers compared. --ignore-trace-key drops a per-member
trace field that only one side records (a field added to the traces between the two runs).
"""
import argparse
import json


def _records(path):
    with open(path, encoding="utf-8") as f:
        return {r["id"]: r for r in map(json.loads, f)}


def _without(record, keys):
    record = json.loads(json.dumps(record))
    for rnd in record.get("trace") or ():
        for member in rnd.get("members", ()):
            for k in keys:
                member.pop(k, None)
    return record


def _numbers(obj) -> int:
    if isinstance(obj, float):
        return 1
    if isinstance(obj, dict):
        return sum(map(_numbers, obj.values()))
    if isinstance(obj, list):
        return sum(map(_numbers, obj))
    return 0


def compare(a_path, b_path, ignore=()) -> dict:
    a, b = _records(a_path), _records(b_path)
    ids = [i for i in a if i in b]
    pairs = [(_without(a[i], ignore), _without(b[i], ignore)) for i in ids]
    return {"examples": len(ids),
            "same_prediction": sum(x["prediction"] == y["prediction"] for x, y in pairs),
            "same_trace": sum(x.get("trace") == y.get("trace") for x, y in pairs),
            "same_record": sum(x == y for x, y in pairs),
            "trace_numbers": sum(_numbers(x.get("trace")) for x, _ in pairs)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--ignore-trace-key", action="append", default=[], metavar="KEY")
    args = ap.parse_args(argv)
    out = compare(args.a, args.b, args.ignore_trace_key)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
