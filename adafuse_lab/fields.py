"""One type check for the fields of the project's settings (RunConfig, NotebookParams,
DecodeConfig), whoever wrote them: the CLI, a plan or parameter file, Python. A wrong type is
one error naming the field, not a TypeError deep inside, a string read as true, 2.5 tokens or
NaN that runs and decodes something else than was asked. Ranges and names are each class's own
checks."""
from __future__ import annotations

import dataclasses
import json
import math
import numbers

WANT = {"str": "a string", "int": "a whole number", "float": "a finite number", "dict": "a mapping of names to values",
        "tuple": "a list (or a comma-separated string)",
        "tuple[str, ...]": "a list of strings (or a comma-separated string)",
        "tuple[float, ...]": "a list of finite numbers, one per member"}


def finite(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def shown(v) -> str:
    """A value as the user wrote it: JSON for JSON values ('abc', 5, true, null, [1]), else repr."""
    if isinstance(v, str):
        return repr(v)
    try:
        return json.dumps(v)
    except (TypeError, ValueError):
        return repr(v)


def check_field_types(obj, error=ValueError, prefix: str = "") -> None:
    """Every field of the (frozen) dataclass `obj` holds its annotated type, None only where the
    annotation allows it: str; int (a whole number, not a bool; numpy's kept as int); float (a
    finite number, not a bool); bool; dict; tuple (a list or a comma-separated string; tuple[str,
    ...]: of strings; tuple[float, ...]: finite numbers, kept as a tuple of floats). A type this
    check does not know is left to the field's own checks."""
    for f in dataclasses.fields(obj):
        v, parts = getattr(obj, f.name), [x.strip() for x in str(f.type).split("|")]
        optional = "None" in parts
        base = next((x for x in parts if x != "None"), "")
        if v is None and optional:
            continue
        kind = base.split("[")[0]
        if kind == "bool":
            ok = isinstance(v, bool)
        elif kind == "int":
            ok = isinstance(v, numbers.Integral) and not isinstance(v, bool)
            if ok and type(v) is not int:  # numpy.int64 from np.arange: a plain int (JSON, hashing)
                object.__setattr__(obj, f.name, int(v))
        elif kind == "float":
            ok = finite(v)
        elif kind == "str":
            ok = isinstance(v, str)
        elif kind == "dict":
            ok = isinstance(v, dict)
        elif base == "tuple[float, ...]":
            ok = isinstance(v, (list, tuple)) and all(finite(w) for w in v)
            if ok:
                object.__setattr__(obj, f.name, tuple(float(w) for w in v))
        elif kind == "tuple":
            ok = isinstance(v, str) or (isinstance(v, (list, tuple)) and
                                        (base != "tuple[str, ...]" or all(isinstance(x, str) for x in v)))
        else:
            continue
        if not ok:
            want = ("true, false" if optional else "true or false") if kind == "bool" else WANT.get(base, WANT.get(kind))
            raise error(f"{prefix}{f.name} must be {want}{' or null' if optional else ''}, got {shown(v)}")
