"""ASGI entry point: HTTP through Django, websockets through Channels.

Served by uvicorn (webapp/supervisor.py ``server_argv``): request bodies are bounded
before Django buffers them (webapp/http_limits.py), and websockets are accepted
only from the site's own origin, port and scheme included (webapp/origin.py).
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
django_asgi_app = get_asgi_application()  # before importing anything that touches models

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from ensembles.routing import websocket_urlpatterns  # noqa: E402
from webapp.http_limits import RequestBodyLimit  # noqa: E402
from webapp.origin import SameOriginValidator  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": RequestBodyLimit(django_asgi_app),
        "websocket": SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
