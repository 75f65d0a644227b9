from django.urls import path, re_path

from . import consumers

websocket_urlpatterns = [
    path("ws/runs/<int:pk>/", consumers.RunConsumer.as_asgi()),
    path("ws/member-runs/<int:pk>/log/<str:stream>/", consumers.LogTailConsumer.as_asgi()),
    re_path(r"", consumers.NotFoundConsumer.as_asgi()),  # close unknown paths cleanly, no traceback
]
