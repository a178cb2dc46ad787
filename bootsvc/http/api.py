"""The flight recorder's operator view over HTTP, without sockets: the JSON
API (docs/api.md) and the web page's static files (bootsvc/web/).

- ``GET /api/machines``: every machine's row (``bootsvc machines --json``);
- ``GET /api/machines/<host-or-mac>/boots?limit=N``: its latest boots'
  timelines, the latest first;
- ``GET /`` and ``GET /machines/<host>``: the page; ``/web/<file>`` its
  script and style.

The service asks a :class:`BootViews` for the data; the wiring makes one
from the fleet and the recorder (bootsvc/views.py). Nothing here reaches
into either. The live stream ``/api/events`` is in bootsvc/http/sse.py.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any, Protocol
from urllib.parse import parse_qs

import orjson

from .message import Reply, Status

DEFAULT_LIMIT = 5  # boots per timeline request
MAX_LIMIT = 100
JSON = "application/json"
# the page runs only its own script and style, and data is never markup
# (app.js sets textContent): a host name like "<img onerror=...>" stays text
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8"}

Listener = Callable[[str], None]  # told the MAC of a boot that changed, from any thread


class BootViews(Protocol):
    """What the HTTP service asks of the fleet and the flight recorder."""

    def machines(self, now: float) -> list[dict[str, Any]]:
        """Every machine's row: inventory, adopted, and recorded ones."""
        ...

    def boots(self, who: str, limit: int, now: float) -> list[dict[str, Any]] | None:
        """A machine's latest boots' timelines (host name or MAC); None if
        there is no such machine."""
        ...

    def summary(self, mac: str, now: float) -> dict[str, Any] | None:
        """The summary of a machine's latest boot."""
        ...

    def watch(self, listener: Listener) -> None: ...

    def unwatch(self, listener: Listener) -> None: ...


def api_reply(path: str, query: str, views: BootViews, now: float) -> Reply | None:
    """The reply to a GET under ``/api/``; None if ``path`` is none of its."""
    if path == "/api/machines":
        return json_reply(views.machines(now))
    parts = path.split("/")  # "", "api", "machines", who, "boots"
    if len(parts) != 5 or parts[:3] != ["", "api", "machines"] or parts[4] != "boots" or not parts[3]:
        return None
    try:
        limit = _limit(query)
    except ValueError as e:
        return Reply(Status.BAD_REQUEST, f"{e}\n".encode())
    boots = views.boots(parts[3], limit, now)
    if boots is None:
        return Reply(Status.NOT_FOUND, b"no such machine\n")
    return json_reply(boots)


def _limit(query: str) -> int:
    values = parse_qs(query).get("limit")
    if not values:
        return DEFAULT_LIMIT
    text = values[-1]
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIMIT:
        raise ValueError(f"limit must be a number from 1 to {MAX_LIMIT}")
    return int(text)


def json_reply(value: object) -> Reply:
    return Reply(Status.OK, orjson.dumps(value, default=str), content_type=JSON, headers=SECURITY_HEADERS)


def page_reply(path: str) -> Reply | None:
    """The page (for ``/`` and ``/machines/<host>``: the script reads the
    host from the address) and its files; None for other paths."""
    if path == "/" or path.startswith("/machines/"):
        name = "index.html"
    elif path.startswith("/web/") and path[len("/web/"):] in STATIC:
        name = path[len("/web/"):]
    else:
        return None
    return Reply(Status.OK, static(name), content_type=STATIC[name], headers=SECURITY_HEADERS)


@cache
def static(name: str) -> bytes:
    """A file of bootsvc/web/ (package data), read once."""
    return resources.files("bootsvc.web").joinpath(name).read_bytes()
