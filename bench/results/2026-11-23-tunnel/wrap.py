"""Run a sidecar under cProfile, enabled on SIGUSR1 and dumped to argv[1] on SIGUSR2."""

import cProfile
import runpy
import signal
import sys

prof = cProfile.Profile()
out = sys.argv.pop(1)
signal.signal(signal.SIGUSR1, lambda *_: prof.enable())
signal.signal(signal.SIGUSR2, lambda *_: (prof.disable(), prof.dump_stats(out)))
sys.argv[0] = "sidecar"
runpy.run_module("sidecar", run_name="__main__", alter_sys=True)
