"""Request bodies are bounded before they are buffered, and sockets open only from
the site's own origin: checked against the real web server process (uvicorn, as
webapp.supervisor starts it) on a free loopback port, through raw sockets."""

import http.client
import os
import re
import select
import socket
import threading
import time
import urllib.parse
import urllib.request
from unittest import mock

import pytest

from ensembles import services
from ensembles.models import AttachedFile
from tests.conftest import PASSWORD, web_server
from webapp.http_limits import max_body_bytes

MB = 1024 * 1024
BOUNDARY = "----flotilla-test-boundary"


@pytest.fixture(scope="module")
def web(test_database_url):
    """The web server on the test database, with the default upload limit, as deployed: (base URL, port, pid)."""
    with web_server(test_database_url, log_prefix="limits", drop_env=["FLOTILLA_MAX_UPLOAD_BYTES"]) as (url, port, process):
        yield url, port, process.pid


class RssSampler:
    """The server's resident memory, sampled every 10 ms from /proc while in use."""

    def __init__(self, pid):
        self.pid = pid
        self.baseline = self.rss()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            return int(re.search(r"^VmRSS:\s+(\d+) kB", status.read(), re.M).group(1)) * 1024

    def _run(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.rss())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.baseline) / MB


def healthz_seconds(url) -> float:
    started = time.monotonic()
    with urllib.request.urlopen(f"{url}/healthz", timeout=10) as response:
        assert response.status == 200
    return time.monotonic() - started


def push_until_answered(sock, head: bytes, chunks, timeout=20.0):
    """Send ``head`` then the body ``chunks`` as fast as the server takes them, reading
    all along; stop when the server answers and closes. -> (response bytes, body bytes
    sent, seconds to the first response byte)."""
    sock.sendall(head)
    sock.setblocking(False)
    response, sent, first_byte = b"", 0, None
    started = time.monotonic()
    pending, chunks = b"", iter(chunks)
    sending = True
    while time.monotonic() - started < timeout:
        if sending and not pending:
            pending = next(chunks, b"")
            sending = bool(pending)
        readable, writable, _ = select.select([sock], [sock] if sending else [], [], 0.05)
        if readable:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            if first_byte is None:
                first_byte = time.monotonic() - started
            response += data
        elif writable:
            try:
                count = sock.send(pending)
            except (BrokenPipeError, ConnectionResetError):
                sending = False
                continue
            sent += count
            pending = pending[count:]
    return response, sent, first_byte


def status_of(response: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", response)
    return int(match.group(1)) if match else None


def zeros(total, size=256 * 1024):
    block = bytes(size)
    while total > 0:
        yield block[: min(size, total)]
        total -= size


def multipart_head(name: str, filename: str) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()


def login(port) -> dict[str, str]:
    """Log in as alice through the login form, as a browser does: -> cookies."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/login/")
    response = conn.getresponse()
    page = response.read().decode()
    csrf = re.search(r"csrftoken=([^;]+)", response.getheader("Set-Cookie")).group(1)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    body = urllib.parse.urlencode({"username": "alice", "password": PASSWORD, "csrfmiddlewaretoken": token})
    conn.request("POST", "/login/", body=body, headers={
        "Content-Type": "application/x-www-form-urlencoded", "Cookie": f"csrftoken={csrf}"})
    response = conn.getresponse()
    page = response.read().decode()
    assert response.status == 302, (response.status, re.findall(r'class="[^"]*error[^"]*"[^>]*>([^<]*)', page))
    cookies = dict(re.findall(r"(csrftoken|sessionid)=([^;]+)", ", ".join(response.headers.get_all("Set-Cookie"))))
    conn.close()
    return {"csrftoken": csrf, **cookies}


def refuse_300_mb(web, path, extra_headers=""):
    """POST a body declared as 300 MB, pushing it as fast as the server takes it."""
    url, port, pid = web
    declared = 300 * MB
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {declared}\r\n{extra_headers}\r\n").encode()
    with RssSampler(pid) as memory, socket.create_connection(("127.0.0.1", port)) as sock:
        response, sent, first_byte = push_until_answered(sock, head, zeros(declared))
    assert status_of(response) == 413, response[:300]
    assert b"too large" in response
    assert first_byte < 1.0
    assert sent < 32 * MB  # only what the kernel's socket buffers took; the server read none of it
    assert memory.growth_mb < 100
    assert healthz_seconds(url) < 2.0
    return memory.growth_mb, first_byte, sent


def test_an_anonymous_300_mb_post_is_refused_at_once_without_reading_it(web):
    growth, seconds, sent = refuse_300_mb(web, "/login/")
    print(f"\nanon_post_peak_mb={growth:.1f} time_to_413_s={seconds:.4f} client_sent_mb={sent / MB:.1f}")


def test_a_logged_in_300_mb_upload_is_refused_at_once_without_reading_it(web, transactional_db, ensemble):
    cookies = login(web[1])
    growth, seconds, sent = refuse_300_mb(web, f"/ensembles/{ensemble.pk}/files", (
        f"Cookie: csrftoken={cookies['csrftoken']}; sessionid={cookies['sessionid']}\r\n"
        f"X-CSRFToken: {cookies['csrftoken']}\r\n"))
    print(f"\nlogged_in_upload_peak_mb={growth:.1f} time_to_413_s={seconds:.4f} client_sent_mb={sent / MB:.1f}")


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit(web):
    url, port, pid = web
    limit = max_body_bytes()
    head = (f"POST /login/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()

    def chunked(total):
        for block in zeros(total, MB):
            yield f"{len(block):x}\r\n".encode() + block + b"\r\n"
        yield b"0\r\n\r\n"

    latencies = []
    streaming = threading.Event()

    def probe():
        while streaming.is_set():
            latencies.append(healthz_seconds(url))
            time.sleep(0.02)

    with RssSampler(pid) as memory, socket.create_connection(("127.0.0.1", port)) as sock:
        streaming.set()
        prober = threading.Thread(target=probe)
        prober.start()
        try:
            response, sent, first_byte = push_until_answered(sock, head, chunked(limit + 64 * MB))
        finally:
            streaming.clear()
            prober.join()
    print(f"\nchunked: refused after {sent / MB:.1f} MB sent (limit {limit / MB:.1f} MB), {first_byte:.2f} s, "
          f"server RSS growth {memory.growth_mb:.1f} MB, /healthz max {max(latencies):.3f} s over {len(latencies)} probes")
    assert status_of(response) == 413, response[:300]
    assert limit < sent < limit + 32 * MB
    assert memory.growth_mb < 100
    assert max(latencies) < 2.0


def test_healthz_answers_while_a_large_upload_is_in_flight(web):
    url, port, pid = web
    declared = 40 * MB  # within the limit: read, and spooled to disk
    head = (f"POST /login/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {declared}\r\n\r\n").encode()
    with RssSampler(pid) as memory, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head)
        for block in zeros(declared // 2):
            sock.sendall(block)
        latencies = [healthz_seconds(url) for _ in range(5)]  # the upload waits for the rest
        for block in zeros(declared - declared // 2):
            sock.sendall(block)
        sock.settimeout(20)
        response = sock.recv(65536)
    print(f"\nin flight: /healthz max {max(latencies):.3f} s, server RSS growth {memory.growth_mb:.1f} MB")
    assert max(latencies) < 2.0
    assert status_of(response) == 403  # anonymous, no CSRF token: refused by Django, after reading the body
    assert memory.growth_mb < 100


def test_a_5_mb_upload_under_the_limit_is_stored(web, transactional_db, ensemble):
    url, port, pid = web
    cookies = login(port)
    content = os.urandom(5 * MB)
    body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"action\"\r\n\r\ncopy\r\n".encode()
            + multipart_head("upload", "input.bin") + content + f"\r\n--{BOUNDARY}--\r\n".encode())
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", f"/ensembles/{ensemble.pk}/files", body=body, headers={
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        "Cookie": f"csrftoken={cookies['csrftoken']}; sessionid={cookies['sessionid']}",
        "X-CSRFToken": cookies["csrftoken"], "HX-Request": "true",
    })
    response = conn.getresponse()
    page = response.read().decode()
    conn.close()
    assert response.status == 200, re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))[:1500]
    attached = AttachedFile.objects.get(ensemble=ensemble)
    with open(attached.path, "rb") as stored:
        assert stored.read() == content


def test_a_socket_opens_only_from_the_sites_own_origin(web, transactional_db, alice, experiment, ensemble):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    url, port, pid = web
    cookies = login(port)
    with mock.patch("ensembles.services._enqueue"):
        run = services.run_launch(user=alice, experiment=experiment)
    member = run.members.first()
    paths = [f"/ws/runs/{run.pk}/", f"/ws/member-runs/{member.pk}/log/out/"]
    headers = {"Cookie": f"sessionid={cookies['sessionid']}"}

    def opens(path, origin):
        try:
            with connect(f"ws://127.0.0.1:{port}{path}", origin=origin, additional_headers=headers, open_timeout=10) as ws:
                if "runs/" in path and "member" not in path:
                    ws.send('{"action": "catch_up", "since": null}')
                    assert 'id="run-counts"' in ws.recv(timeout=10)
                return True
        except InvalidStatus as error:
            assert error.response.status_code == 403
            return False

    foreign = ["http://127.0.0.1:9999", "https://127.0.0.1:" + str(port), "http://localhost:" + str(port), "null"]
    accepted_foreign = sum(opens(path, origin) for path in paths for origin in foreign)
    print(f"\ncross_origin_ws_accepted={accepted_foreign}")
    assert accepted_foreign == 0
    assert all(opens(path, f"http://127.0.0.1:{port}") for path in paths)
