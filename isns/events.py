"""Events: what the registry and the server tell their host, one call per
event: ``on_event(what, fields)``, ``what`` named ``isns.<event>`` and the
fields named alike everywhere (``peer``: a client's address as host:port,
``entity``: an EID, ``why``: the reason in words). Without a callback the
server logs each event as one logfmt line."""

from __future__ import annotations

from collections.abc import Callable

OnEvent = Callable[[str, dict[str, object]], None]  # (what, fields), e.g. ("isns.registered", {"entity": ...})

_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                   "!#$%&'()*+,-./:;<>?@[]^_`{|}~")


def ignore_event(what: str, fields: dict[str, object]) -> None:
    """The default callback: nothing is told."""


def logfmt(what: str, fields: dict[str, object]) -> str:
    """``event=<what> key=value ...``; a value that is empty or holds a
    space, ``=``, a quote, a backslash or a control character is written in
    double quotes with ``"`` and ``\\`` backslash-escaped (and a newline as
    ``\\n``: one event stays one line)."""
    return " ".join([f"event={what}", *(f"{key}={_value(value)}" for key, value in fields.items())])


def _value(value: object) -> str:
    text = str(value)
    if text and _PLAIN.issuperset(text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def peer_text(address: object) -> str:
    """A socket address as host:port (anything else as it prints)."""
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)
