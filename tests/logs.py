"""What a back-end process (web server, Celery worker, monitor) must never log: an error
nobody handled. The tests keep each process's output in a file and read it in pieces,
so that a traceback fails the test during which it was written."""

from __future__ import annotations

from pathlib import Path

ERROR_MARKERS = ("Traceback", "Exception inside application")
EXCERPT_LINES = 40  # a traceback's usual length, and then some


def error_excerpts(text: str) -> list[str]:
    """Each unhandled error reported in ``text``: its marker line, the line before it (the
    log record that introduces a traceback) and the lines after it (the traceback)."""
    lines = text.splitlines()
    excerpts, covered = [], 0
    for i, line in enumerate(lines):
        if i >= covered and any(marker in line for marker in ERROR_MARKERS):
            covered = i + EXCERPT_LINES
            excerpts.append("\n".join(lines[max(0, i - 1):covered]))
    return excerpts


class LogFile:
    """A process's log file, checked in pieces: each read returns what was written since
    the one before, up to its last complete line (a line being written is read whole next
    time, so a marker is never cut in two)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.checked = self.size()  # bytes read by earlier checks; what was there before is not this process's

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def unchecked(self) -> str:
        try:
            with open(self.path, "rb") as log:
                log.seek(self.checked)
                data = log.read()
        except FileNotFoundError:
            return ""
        complete = data.rfind(b"\n") + 1
        self.checked += complete
        return data[:complete].decode(errors="replace")

    def errors(self, who: str, when: str) -> str:
        """A report of the errors logged since the last check ("" if none), naming the process and when."""
        excerpts = error_excerpts(self.unchecked())
        if not excerpts:
            return ""
        return f"{who} logged {len(excerpts)} error(s) {when} ({self.path}):\n" + "\n---\n".join(excerpts)
