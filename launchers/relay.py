"""The relay: pushes the events of a runner that works as another Unix account to Redis.

A runner started as a user's account (``FLOTILLA_RUN_AS=user``) must not hold
the server's Redis credentials: its members run as the same account and could
read them from its memory. It writes its events to its stdout instead; this
process, the server's, started fresh by ``launchers.accounts``, starts the
member-side agent (through sudo) with that pipe as the agent's stdout, tells
its caller whether the submission worked, then forwards every line it reads to
the Redis stream, exactly as a runner of the server's account would.

Its configuration comes on stdin: ``{"command": [...], "request": "<line>",
"redis_url", "stream", "group"}``. It detaches (its own session), answers its
caller on stdout (``{"ok": true}`` or ``{"error": "..."}``), then closes it. It
ends when the runner does (the pipe closes). If it dies, the runner goes on:
the journals stay the source of truth, and the monitor reconciles from them.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # -I leaves the project off sys.path

from launchers.local import EventSink  # noqa: E402

PR_SET_DUMPABLE = 4


def main() -> int:
    config = json.loads(sys.stdin.buffer.read())
    os.umask(0o077)
    if os.fork():
        os._exit(0)  # the caller waits for the detached child's answer on the pipe it inherited
    os.setsid()
    # Its memory holds the Redis credentials: no other process of the account may read it.
    ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    agent = subprocess.Popen(
        config["command"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=config.get("env", {}), close_fds=True,
    )
    agent.stdin.write(config["request"].encode() + b"\n")
    agent.stdin.close()
    problem = agent.stderr.read().decode(errors="replace").strip()  # the agent exits once the runner is started
    agent.wait()
    answer = {"ok": True} if agent.returncode == 0 else {"error": problem or f"the agent exited with {agent.returncode}"}
    os.write(1, json.dumps(answer).encode())
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 1)  # the caller stops waiting
    os.close(null)
    sink = EventSink(config["redis_url"], config["stream"], config["group"])
    buffered = b""
    while chunk := os.read(agent.stdout.fileno(), 65536):  # what one read brings goes as one stream entry
        buffered += chunk
        *lines, buffered = buffered.split(b"\n")
        for line in lines:
            if line:
                sink.emit(line.decode(errors="replace"))
        sink.send()
    sink.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
