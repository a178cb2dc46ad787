"""Listen and server addresses as the config writes them: ``HOST[:PORT]``
or ``[V6]:PORT``. One type for every service's address (iSCSI portals,
HTTP, DNS, TFTP, iSNS), so none borrows another package's."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, default_port: int, what: str = "address") -> HostPort:
        """``HOST[:PORT]`` or ``[V6]:PORT``; ValueError naming the text if not."""
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            port = rest.lstrip(":") or str(default_port)
        else:
            host, _, port = text.rpartition(":") if text.count(":") == 1 else (text, "", str(default_port))
        if port.isdigit() and host and not 0 < int(port) < 65536:
            raise ValueError(f"{text}: {port} is not a port (1-65535)")
        if not port.isdigit() or not host:
            raise ValueError(f"{text} is not {'an' if what[0] in 'aeiou' else 'a'} {what} like HOST:PORT")
        return cls(host, int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
