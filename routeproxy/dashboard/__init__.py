"""``GET /dashboard``: one page, served from the files beside this module (no build step, no CDN).

Trust model: the page and its files hold no data and no secret, so they are served to anyone who can reach the
proxy, like ``/healthz``. The figures come from the JSON endpoints, fetched by the browser with whatever the
operator typed into the page: a client key for the read-only endpoints, the admin token for changes (both kept
in the tab's sessionStorage and sent as ``Authorization: Bearer``, never in a URL). The content security policy
lets the page load only its own files and talk only to this origin.
"""

from __future__ import annotations

from importlib import resources

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_MEDIA_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "blocks.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


def dashboard_routes() -> list[Route]:
    """``/dashboard`` (the page) and ``/dashboard/<file>`` (its script and style), read once at start."""
    files = {name: resources.files(__name__).joinpath(name).read_bytes() for name in _MEDIA_TYPES}

    def respond(name: str) -> Response:
        return Response(files[name], media_type=_MEDIA_TYPES[name], headers=_HEADERS)

    async def page(request: Request) -> Response:
        return respond("index.html")

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in files or name == "index.html":
            raise HTTPException(404, "no such dashboard file")
        return respond(name)

    return [Route("/dashboard", page, methods=["GET"]), Route("/dashboard/{name}", asset, methods=["GET"])]
