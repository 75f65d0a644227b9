"""Run a Python script under cProfile counting CPU time, not wall time (a monitor
mostly waits, and wall time would bury its work under its sleeps); the stats go
to $BENCH_PROFILE_MONITOR when it exits. Usage: python _cpuprofile.py script.py [args...]"""

import atexit
import cProfile
import os
import runpy
import sys
import time

profile = cProfile.Profile(time.process_time)
atexit.register(lambda: (profile.disable(), profile.dump_stats(os.environ["BENCH_PROFILE_MONITOR"])))
sys.argv = sys.argv[1:]
sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))  # as if the script were run itself
profile.enable()
runpy.run_path(sys.argv[0], run_name="__main__")
