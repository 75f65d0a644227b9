"""Websocket consumers. Authentication and permission are checked in connect()."""

from channels.generic.websocket import AsyncJsonWebsocketConsumer


class HealthConsumer(AsyncJsonWebsocketConsumer):
    """Answers a logged-in user's ping through the channel layer, proving the
    websocket path (ASGI server, auth, Redis layer) works end to end."""

    async def connect(self):
        if not self.scope["user"].is_authenticated:
            await self.close(code=4401)
            return
        self.group = f"user.{self.scope['user'].pk}.health"
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content, **kwargs):
        await self.channel_layer.group_send(self.group, {"type": "health.pong", "echo": content.get("ping")})

    async def health_pong(self, event):
        await self.send_json({"pong": event["echo"]})
