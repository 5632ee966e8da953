"""Offline evaluation of routers and escalation checks (not on the request path)."""
