"""Where does a run hang? Runs `python -m adafuse_lab ARGS...` and, after SECONDS, prints every
thread's Python stack and exits. Usage: python benchmarks/diag/hang.py SECONDS ARGS..."""
import faulthandler
import runpy
import sys

faulthandler.dump_traceback_later(float(sys.argv[1]), exit=True)
sys.argv = ["adafuse_lab", *sys.argv[2:]]
runpy.run_module("adafuse_lab", run_name="__main__")
