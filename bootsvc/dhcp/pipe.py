"""The pipe between ``bootsvc serve`` and its DHCP worker process
(bootsvc/dhcp/worker.py, docs/dhcp-scaling.md): length-prefixed frames,
each a tag byte and its payload.

Both ends are this program: serve starts the worker, and the pipes are
anonymous, inherited by that one child, so nothing else can write to
them. The payloads are therefore Python's own serialisations, which
trust their input: ``marshal`` for what flows on every loop iteration
(events and lease rows: plain tuples; 1.5 µs to read a batch of 16 events
where orjson takes 10), ``pickle`` for the fleet's table (dataclasses, a
few times a day). What a frame decodes to is still checked for the shape
its receiver needs (:func:`batch`, :func:`writes`), so a bug at one end is
a clear PipeError at the other, never a crash; a frame longer than
MAX_FRAME is refused instead of buffered.
"""

from __future__ import annotations

import asyncio
import copyreg
import marshal
import os
import pickle
import struct
from collections.abc import Iterator
from enum import Enum
from types import MappingProxyType

from .leases import Named  # lease writes by statement name, as the journal has them

HEADER = struct.Struct("!cI")  # tag, payload length
MAX_FRAME = 256 << 20  # bytes: the fleet's table of a very big inventory fits
READ_SIZE = 1 << 20  # bytes read per wake-up


class Tag(bytes, Enum):
    """What a frame holds."""

    # worker -> serve
    READY = b"R"  # bound, serving (payload: nothing)
    FAILED = b"F"  # could not start (payload: marshal, the reason)
    BATCH = b"B"  # one loop iteration's events and lease writes (marshal)
    ADOPT = b"A"  # unknown_machines: default: make this MAC a machine (marshal, the MAC)
    # serve -> worker
    TABLE = b"T"  # the fleet as DHCP asks it (pickle, bootsvc/fleet_copy.py)
    SESSIONS = b"S"  # the addresses logged in to their disks (marshal, list of text)
    WRITES = b"W"  # lease writes serve decided (marshal, [(statement, row)])
    ADOPTED = b"D"  # an ADOPT answered: the TABLE before it has the machine, if it was made (marshal, the MAC)


class PipeError(Exception):
    pass


def _mapping(data: dict[object, object]) -> MappingProxyType[object, object]:
    return MappingProxyType(data)


# the config's read-only mappings cross the pipe as what they are
copyreg.pickle(MappingProxyType, lambda m: (_mapping, (dict(m),)))


def frame(tag: Tag, payload: bytes = b"") -> bytes:
    return HEADER.pack(tag.value, len(payload)) + payload


def plain(tag: Tag, value: object) -> bytes:
    """A frame of marshalled ``value`` (plain types only)."""
    return frame(tag, marshal.dumps(value))


def pickled(tag: Tag, value: object) -> bytes:
    return frame(tag, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def unplain(payload: bytes) -> object:
    try:
        return marshal.loads(payload)
    except (EOFError, ValueError, TypeError) as e:
        raise PipeError(f"a frame that is not marshal data: {e}") from None


def unpickled(payload: bytes) -> object:
    try:
        return pickle.loads(payload)  # noqa: S301: the other end is this program's own process
    except Exception as e:  # any unpickling failure is one thing: a broken pipe peer
        raise PipeError(f"a frame that is not pickle data: {e}") from None


Wire = tuple[str, float, "str | None", "str | None", "str | None", "str | None", "str | None", "str | None",
             "dict[str, object]"]  # one event: kind, time, mac, ip, hostname, initiator, target, peer, fields
# Exact types, never ``isinstance``: marshal takes and makes only the
# built-in types themselves, not a subclass (a ``str`` or ``int`` enum is
# "unmarshallable"), and ``set.issuperset(map(type, ...))`` checks a tuple's
# members without a Python frame per member (the checks are on serve's path
# for every event the DHCP worker sends).
_TEXT_TYPES = frozenset({str, type(None)})
_FIELD_TYPES = frozenset({str, int, float, bool, type(None)})
_NUMBER_TYPES = frozenset({int, float})
_KEY_TYPES = frozenset({str})


def field(value: object) -> object:
    """An event's field as a batch carries it: what the log and the event
    file show of it (an enum by its value, an address as text)."""
    if type(value) in _FIELD_TYPES:
        return value
    if isinstance(value, Enum):
        return value.value
    return str(value)


def batch(payload: bytes) -> tuple[list[Wire], Named]:
    """A BATCH frame's events and lease writes, each checked for the shape
    it must have; PipeError for anything else."""
    value = unplain(payload)
    if not (type(value) is tuple and len(value) == 2 and type(value[0]) is list):
        raise PipeError("a batch that is not (events, writes)")
    for event in value[0]:
        if not (type(event) is tuple and len(event) == 9 and type(event[0]) is str
                and type(event[1]) in _NUMBER_TYPES and _TEXT_TYPES.issuperset(map(type, event[2:8]))
                and type(event[8]) is dict and _KEY_TYPES.issuperset(map(type, event[8]))
                and _FIELD_TYPES.issuperset(map(type, event[8].values()))):
            raise PipeError("an event that is not (kind, time, 6 identities, fields)")
    return value[0], writes(value[1])


def writes(value: object) -> Named:
    """Lease writes as the pipe carries them: [(statement, row)]."""
    if isinstance(value, bytes):
        value = unplain(value)
    if type(value) is not list:
        raise PipeError("lease writes that are not [(statement, row)]")
    for w in value:
        if not (type(w) is tuple and len(w) == 2 and type(w[0]) is str and type(w[1]) is tuple
                and _FIELD_TYPES.issuperset(map(type, w[1]))):
            raise PipeError("lease writes that are not [(statement, row)]")
    return value


def text(payload: bytes) -> str:
    value = unplain(payload)
    if not isinstance(value, str):
        raise PipeError("a frame that is not text")
    return value


def texts(payload: bytes) -> list[str]:
    value = unplain(payload)
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise PipeError("a frame that is not a list of text")
    return value


class Frames:
    """Bytes as they arrive, into whole frames."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        # what one read may bring, made once: an os.read of READ_SIZE mapped
        # a fresh MiB, shrank it and unmapped it on every wake-up (mmap,
        # mremap, munmap: half of serve's system time per DHCP exchange)
        self._chunk = bytearray(READ_SIZE)
        self._view = memoryview(self._chunk)

    def read(self, fd: int) -> Iterator[tuple[Tag, bytes]]:
        """What ``fd`` holds now (up to READ_SIZE), as the whole frames it
        completes; EOFError at the pipe's end, BlockingIOError (from the
        call, not the iteration) if it holds nothing yet."""
        n = os.readv(fd, [self._chunk])
        if not n:
            raise EOFError("the pipe ended")
        return self.feed(self._view[:n])

    def feed(self, data: bytes | memoryview) -> Iterator[tuple[Tag, bytes]]:
        self.buffer += data
        return self._frames()

    def _frames(self) -> Iterator[tuple[Tag, bytes]]:
        buffer = self.buffer
        at = 0
        try:
            while len(buffer) - at >= HEADER.size:
                tag, size = HEADER.unpack_from(buffer, at)
                if size > MAX_FRAME:
                    raise PipeError(f"a frame of {size} bytes (at most {MAX_FRAME})")
                end = at + HEADER.size + size
                if len(buffer) < end:
                    break
                try:
                    kind = Tag(tag)
                except ValueError:
                    raise PipeError(f"a frame tagged {tag!r}") from None
                payload = bytes(buffer[at + HEADER.size:end])
                at = end  # before the yield: a caller that stops here has taken this frame
                yield kind, payload
        finally:
            del buffer[:at]


class Writer:
    """A pipe written from the loop without blocking it: what the pipe does
    not take now waits here and goes when it can. A pipe that fails (its
    reader gone) is closed and takes nothing more: the reader's end of the
    other pipe says what happened to it."""

    def __init__(self, fd: int, loop: asyncio.AbstractEventLoop) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.loop = loop
        self.pending = bytearray()

    def send(self, data: bytes) -> None:
        if self.fd < 0:
            return
        if self.pending:
            self.pending += data
            return
        try:
            sent = os.write(self.fd, data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close()
            return
        if sent < len(data):
            self.pending += data[sent:]
            self.loop.add_writer(self.fd, self._drain)

    def _drain(self) -> None:
        try:
            sent = os.write(self.fd, self.pending)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        del self.pending[:sent]
        if not self.pending:
            self.loop.remove_writer(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            self.loop.remove_writer(self.fd)
            self.pending.clear()
            self.fd = -1
