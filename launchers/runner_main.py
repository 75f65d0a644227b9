"""The local runner's program, started fresh (``python -I``) by launchers.local:
its configuration comes on stdin, its pid file path as the only argument."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # -I leaves the project off sys.path

from launchers.local import runner_main  # noqa: E402

runner_main(sys.argv[1])
