"""HTTP/1.1 request heads and response heads (RFC 9112), without sockets.

Only what a boot server needs: GET and HEAD of small scripts and of boot
files, persistent connections (iPXE fetches script, kernel and initrd over
one), byte ranges are not offered. Every bad request is an HttpError with
the status to answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from http import HTTPStatus
from pathlib import Path
from urllib.parse import unquote

MAX_HEAD = 16 * 1024
MAX_HEADERS = 100


class Status(IntEnum):
    OK = 200
    BAD_REQUEST = 400
    FORBIDDEN = 403
    NOT_FOUND = 404
    METHOD_NOT_ALLOWED = 405
    URI_TOO_LONG = 414
    HEADERS_TOO_LARGE = 431
    INTERNAL_ERROR = 500
    SERVICE_UNAVAILABLE = 503
    VERSION_NOT_SUPPORTED = 505

    @property
    def reason(self) -> str:
        return HTTPStatus(self).phrase


@dataclass
class Reply:
    status: Status
    body: bytes = b""
    path: Path | None = None  # sent with sendfile instead of body
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] | None = None  # more header fields (the web page's security policy)


class HttpError(Exception):
    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class HttpRequest:
    method: str
    path: str  # percent-decoded, without the query
    query: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)  # lowercase names

    @property
    def keep_alive(self) -> bool:
        """RFC 9112 §9.3: 1.1 persists unless "close"; 1.0 only with "keep-alive"."""
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        return "keep-alive" in tokens if self.version == "HTTP/1.0" else "close" not in tokens


def parse_head(head: bytes) -> HttpRequest:
    """The request line and header fields (RFC 9112 §3, §5), ``head`` being
    everything before the blank line."""
    if len(head) > MAX_HEAD:
        raise HttpError(Status.HEADERS_TOO_LARGE, "request head too large")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1]:
        raise HttpError(Status.BAD_REQUEST, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(Status.VERSION_NOT_SUPPORTED, f"{version[:20]!r} is not HTTP/1.x")
    if not target.startswith("/"):
        raise HttpError(Status.BAD_REQUEST, "only origin-form request targets are served")
    if len(lines) - 1 > MAX_HEADERS:
        raise HttpError(Status.HEADERS_TOO_LARGE, "too many header fields")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or any(c in name for c in " \t"):
            raise HttpError(Status.BAD_REQUEST, "malformed header field")
        headers[name.lower()] = value.strip()
    if "transfer-encoding" in headers or int_or_none(headers.get("content-length", "0")) != 0:
        raise HttpError(Status.BAD_REQUEST, "request bodies are not accepted")
    path, _, query = target.partition("?")
    try:
        decoded = unquote(path, errors="strict") if "%" in path else path
    except UnicodeDecodeError:
        raise HttpError(Status.BAD_REQUEST, "the path is not UTF-8") from None
    if "\0" in decoded:
        raise HttpError(Status.BAD_REQUEST, "NUL in the path")
    return HttpRequest(method, decoded, query, version, headers)


def int_or_none(text: str) -> int | None:
    # ASCII digits only (RFC 9110 §8.6): str.isdigit() also takes "\xb3" (³), which int() refuses
    return int(text) if text.isascii() and text.isdigit() else None


def response_head(status: Status, length: int, content_type: str = "text/plain; charset=utf-8",
                  keep_alive: bool = True, extra: dict[str, str] | None = None) -> bytes:
    return _head(status, [f"Content-Length: {length}", f"Content-Type: {content_type}"], keep_alive, extra)


def stream_head(content_type: str, extra: dict[str, str] | None = None) -> bytes:
    """The head of a reply without a length that ends when the connection
    closes (a server-sent event stream, RFC 9112 §6.3 rule 8)."""
    return _head(Status.OK, [f"Content-Type: {content_type}"], False, extra)


def _head(status: Status, fields: list[str], keep_alive: bool, extra: dict[str, str] | None) -> bytes:
    lines = [f"HTTP/1.1 {int(status)} {status.reason}", *fields, "Cache-Control: no-store", "Server: bootsvc"]
    if not keep_alive:
        lines.append("Connection: close")
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
