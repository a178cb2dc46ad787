"""Text key=value pairs of Login and Text PDUs (RFC 7143 §6.1)."""

from __future__ import annotations

MAX_KEY_LEN = 63  # §6.1: key names are at most 63 bytes


class TextFormatError(ValueError):
    """A data segment that is not a sequence of key=value\\0 pairs."""


def decode_text(data: bytes | memoryview) -> list[tuple[str, str]]:
    """Pairs in order. Trailing NULs (padding) are ignored; a pair without
    '=', an empty or overlong key, or non-UTF-8 text is an error."""
    raw = bytes(data).rstrip(b"\0")
    if not raw:
        return []
    pairs: list[tuple[str, str]] = []
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if not sep:
            raise TextFormatError(f"text item without '=': {item[:40]!r}")
        if not key or len(key) > MAX_KEY_LEN:
            raise TextFormatError(f"bad key name {key[:70]!r}")
        try:
            pairs.append((key.decode("utf-8"), value.decode("utf-8")))
        except UnicodeDecodeError as e:
            raise TextFormatError(f"key or value is not UTF-8: {item[:40]!r}") from e
    return pairs


def encode_text(pairs: list[tuple[str, str]]) -> bytes:
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in pairs)
