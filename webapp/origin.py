"""Websockets are accepted only from pages of the site's own origin.

Browsers send cookies to a host whatever its port, so a page served from
http://127.0.0.1:9999 (any local process) can open a socket to the app on
http://127.0.0.1:8000 with the user's session. Channels' AllowedHostsOriginValidator
checks only the Origin's host name; this one applies the rule Django's CSRF check
applies to form posts, scheme and port included:

- the Host (X-Forwarded-Host if USE_X_FORWARDED_HOST) must be in ALLOWED_HOSTS;
- the Origin must equal ``<scheme>://<host>`` of the socket's own request, the
  scheme being https for wss, http for ws, or what SECURE_PROXY_SSL_HEADER says
  when it is set (BEHIND_HTTPS_PROXY), and the host the Host header with its port;
- or the Origin is listed in CSRF_TRUSTED_ORIGINS (``https://*.example.org`` too);
- a socket without an Origin (or with several) is refused: every browser sends one.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain


def _meta(scope) -> tuple[dict[str, str], list[str]]:
    """The headers as Django's request.META names them, and the Origin headers."""
    meta: dict[str, str] = {}
    origins: list[str] = []
    for raw_name, raw_value in scope.get("headers", ()):
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        if name == "origin":
            origins.append(value)
        key = "HTTP_" + name.upper().replace("-", "_")
        meta[key] = f"{meta[key]},{value}" if key in meta else value
    return meta, origins


def _scheme(scope, meta: dict[str, str]) -> str:
    """http or https, as request.scheme would say for this socket's request."""
    if settings.SECURE_PROXY_SSL_HEADER:
        header, secure_value = settings.SECURE_PROXY_SSL_HEADER
        value = meta.get(header)
        if value is not None:
            return "https" if value.split(",", 1)[0].strip() == secure_value else "http"
    return "https" if scope.get("scheme") in ("wss", "https") else "http"


def _allowed_host(meta: dict[str, str]) -> str | None:
    """The request's host (with its port) if it is in ALLOWED_HOSTS, as request.get_host() does."""
    if settings.USE_X_FORWARDED_HOST and "HTTP_X_FORWARDED_HOST" in meta:
        host = meta["HTTP_X_FORWARDED_HOST"]
    else:
        host = meta.get("HTTP_HOST")
    if not host:
        return None
    allowed_hosts = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed_hosts:
        allowed_hosts = [".localhost", "127.0.0.1", "[::1]"]
    domain, _ = split_domain_port(host)
    return host if domain and validate_host(domain, allowed_hosts) else None


def _trusted(origin: str) -> bool:
    trusted = settings.CSRF_TRUSTED_ORIGINS
    if origin in trusted:
        return True
    try:
        parsed = urlsplit(origin)
    except ValueError:
        return False
    for pattern in trusted:
        if "*" in pattern:
            allowed = urlsplit(pattern)
            if allowed.scheme == parsed.scheme and is_same_domain(parsed.netloc, allowed.netloc.lstrip("*")):
                return True
    return False


def origin_allowed(scope) -> bool:
    meta, origins = _meta(scope)
    if len(origins) != 1:
        return False
    origin = origins[0]
    host = _allowed_host(meta)
    if host is None:
        return False
    return origin == f"{_scheme(scope, meta)}://{host}" or _trusted(origin)


async def deny(scope, receive, send) -> None:
    """Refuse the handshake (the server answers 403). A plain ASGI app, not Channels'
    WebsocketDenier: that one is a consumer, and subscribes to the channel layer
    (a Redis connection) for every refused socket."""
    while True:
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.close", "code": 1008})
        elif message["type"] == "websocket.disconnect":
            return


class SameOriginValidator:
    """Refuse a websocket whose Origin is not the site's own (see the module docstring)."""

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            raise ValueError("SameOriginValidator is for websocket connections only")
        if origin_allowed(scope):
            return await self.application(scope, receive, send)
        return await deny(scope, receive, send)
