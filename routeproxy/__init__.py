"""routeproxy: an OpenAI-compatible reverse proxy that routes each prompt to a small or a large model."""

__version__ = "0.1.0"
