"""Flotilla's member side: what runs as a user's Unix account (``FLOTILLA_RUN_AS=user``).

Started fresh, never forked from the server, as

    sudo -n -u <account> -- <python> -I <agent dir>/launchers/agent.py <verb>

with a JSON request as the first line of stdin (the rest of stdin, for
``stage``, is the files' contents). It answers JSON on stdout; on failure it writes a
message for the user on stderr and exits with 1. It uses the standard library
and this package only, so that any Python 3.11 the accounts can run will do.

Verbs (see ``launchers.accounts`` for the server's side):
  launcher  call a LocalLauncher method (submit, status, cancel, unstarted,
            runner_alive) as the account; ``submit`` leaves the runner's events
            on stdout, for the relay that started this agent
  list      a page of a folder's entries, with sizes
  open      open files for reading and pass their descriptors back over stdout
            (a Unix socket): the server tails or serves them without reading
            the account's folders itself
  stage     write files that follow on stdin into a folder (the server's private inputs, e.g.
            uploads, that members of this account need)
  rename    move folders aside (a re-run keeps the earlier attempts; a delete moves a run's
            folders to the trash first)
  remove    delete folders (emptying the trash of deleted runs)
"""

from __future__ import annotations

import array
import json
import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # -I leaves the project off sys.path

from launchers.accounts import ServerSide  # noqa: E402
from launchers.base import JobSpec, LauncherError  # noqa: E402
from launchers.local import LocalLauncher  # noqa: E402


def launcher(request: dict) -> object:
    local = LocalLauncher(**request["launcher"])
    call = request["call"]
    if call == "submit":
        local.events_to_stdout = True
        local.submit([JobSpec(**job) for job in request["jobs"]], group=request["group"], concurrency=request.get("concurrency"))
        return None
    if call == "status":
        return {key: status.to_dict() for key, status in local.status(request["keys"]).items()}
    if call == "cancel":
        local.cancel([JobSpec(**job) for job in request["jobs"]], group=request["group"])
        return None
    if call == "unstarted":
        return [job.key for job in local.unstarted([JobSpec(**job) for job in request["jobs"]])]
    if call == "runner_alive":
        return local.runner_alive()
    raise LauncherError(f"unknown launcher call {call!r}")


def list_folder(request: dict) -> dict:
    return ServerSide().list_folder(request["folder"], offset=int(request["offset"]), limit=int(request["limit"]))


def open_files(request: dict) -> None:
    """Open each path read-only (never through a symbolic link) and send the descriptors
    of those that opened over stdout, a Unix socket, in one message."""
    opened = ServerSide().open_files(request["paths"])
    descriptors = [fd for fd in opened if fd is not None]
    reply = json.dumps([fd is not None for fd in opened]).encode()
    channel = socket.socket(fileno=os.dup(1))
    channel.sendmsg([reply], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", descriptors))] if descriptors else [])
    channel.close()


def stage(request: dict, payload) -> None:
    """Write ``request["files"]`` ([{"name": relative path, "size": bytes}]), whose contents
    follow on stdin in that order, into ``request["folder"]``."""
    folder = Path(request["folder"])
    for item in request["files"]:
        relative = Path(item["name"])
        if relative.is_absolute() or ".." in relative.parts:
            raise LauncherError(f"refusing to stage {item['name']!r} outside {folder}")
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        left = int(item["size"])
        with open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "wb") as out:
            while left:
                chunk = payload.read(min(left, 1024 * 1024))
                if not chunk:
                    raise LauncherError(f"{item['name']}: the input ended early")
                out.write(chunk)
                left -= len(chunk)


def rename(request: dict) -> list[bool]:
    return ServerSide().rename([tuple(move) for move in request["moves"]])


def remove(request: dict) -> None:
    ServerSide().remove(request["folders"])


VERBS = {"launcher": launcher, "list": list_folder, "rename": rename, "remove": remove}


def main() -> int:
    os.umask(0o077)  # the account's Flotilla folders are its own
    verb = sys.argv[1] if len(sys.argv) > 1 else ""
    request = json.loads(sys.stdin.buffer.readline())
    try:
        if verb == "open":
            open_files(request)
            return 0
        if verb == "stage":
            stage(request, sys.stdin.buffer)
            result = None
        elif verb in VERBS:
            result = VERBS[verb](request)
        else:
            raise LauncherError(f"unknown verb {verb!r}")
    except (LauncherError, OSError) as error:
        sys.stderr.write(f"{error}\n")
        return 1
    if verb != "launcher" or request["call"] != "submit":  # submit's stdout carries the runner's events
        sys.stdout.write(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
