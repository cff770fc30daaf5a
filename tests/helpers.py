"""Helpers shared by test modules (importable: pytest puts tests/ on sys.path)."""
import pytest

from adafuse_lab.cli import main


def fails(argv, capsys):
    """Run main, expect exit 2; return the stderr, which must be one line."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err
