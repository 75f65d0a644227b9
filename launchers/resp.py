"""A send-only Redis connection for the local runner, on the standard library.

The runner is a fresh process (it must not inherit the server's memory), and
``import redis`` alone costs it ~100 ms of CPU: more than starting the first
members. It only ever sends commands it packs itself and wants no replies, so a
socket that speaks the handshake (AUTH, SELECT, CLIENT REPLY OFF) is enough.
URLs as redis-py takes them: ``redis://[[user]:password@]host[:port][/db]``,
``rediss://`` (TLS, verified unless ``?ssl_cert_reqs=none``) and
``unix://[[user]:password@]/path[?db=N]``.
"""

from __future__ import annotations

import socket
from urllib.parse import parse_qs, unquote, urlsplit


def pack(parts: list[bytes]) -> bytes:
    """A command in Redis's wire format (RESP)."""
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)


class SendOnlyConnection:
    """Connects on first use, and again after a failure (the caller decides when)."""

    def __init__(self, url: str, *, timeout: float = 0.5):
        self.url = url
        self.timeout = timeout
        self.sock: socket.socket | None = None

    def _open(self) -> socket.socket:
        parts = urlsplit(self.url)
        query = parse_qs(parts.query)
        if parts.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            sock.connect(unquote(parts.path))
            db = query.get("db", ["0"])[0]
        else:
            sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=self.timeout)
            if parts.scheme == "rediss":
                import ssl  # only then: importing it costs a runner 5 ms

                context = ssl.create_default_context()
                if query.get("ssl_cert_reqs", [""])[0].lower() == "none":
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                sock = context.wrap_socket(sock, server_hostname=parts.hostname)
            db = parts.path.lstrip("/") or "0"
        handshake = []
        if parts.password is not None:
            credentials = [unquote(parts.username)] if parts.username else []
            handshake.append(pack([b"AUTH", *(c.encode() for c in credentials), unquote(parts.password).encode()]))
        if db != "0":
            handshake.append(pack([b"SELECT", db.encode()]))
        try:
            if handshake:
                sock.sendall(b"".join(handshake))
                for _ in handshake:
                    reply = _read_line(sock)
                    if not reply.startswith(b"+"):
                        raise ConnectionError(f"Redis refused the handshake: {reply.decode(errors='replace')}")
            sock.sendall(pack([b"CLIENT", b"REPLY", b"OFF"]))  # from here on, nothing to read
        except BaseException:
            sock.close()
            raise
        return sock

    def send(self, commands: list[bytes]) -> None:
        if self.sock is None:
            self.sock = self._open()
        self.sock.sendall(b"".join(commands))

    def disconnect(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("Redis closed the connection during the handshake")
        data += chunk
    return data[:-2]
