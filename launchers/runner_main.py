"""The local runner's program, started fresh (``python -I -S``) by launchers.local:
its configuration comes on stdin, its pid file path as the only argument.

It detaches before importing anything of Flotilla's: its launcher waits only for
the pid file, so the wait is an interpreter's start and no more."""

import json
import os
import signal
import sys

signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # a cancel's nudge must not kill it; the runner reads the keys anyway
config = json.loads(sys.stdin.buffer.read())
os.umask(0o077)
child = os.fork()
if child:
    with open(sys.argv[1], "w") as pid_file:
        pid_file.write(str(child))
    os._exit(0)
os.setsid()
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
os.close(null)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # -I leaves the project off sys.path

from launchers.local import runner_main  # noqa: E402

runner_main(config)
