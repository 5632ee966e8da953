"""The HTTP API on top: the ASGI app and its lifespan, the endpoints (chat, models, admin, feedback, stored
responses), the per-process resources, logging, the server and start-up."""
