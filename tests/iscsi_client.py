"""A small blocking iSCSI initiator for tests: just enough to drive the
target through normal and malformed exchanges that real initiators never
send. Real-initiator tests live in tests/e2e/."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

from target.chap import ChapAlgorithm, decode_binary, encode_binary, response
from target.framing import DigestSettings, PduReader, frame
from target.pdu import (
    R2T,
    DataIn,
    DataOut,
    LoginRequest,
    LoginResponse,
    LogoutRequest,
    Pdu,
    ScsiCommand,
    SnackRequest,
    Stage,
    TaskMgmtRequest,
    TextRequest,
    encode,
)
from target.text import decode_text, encode_text

INITIATOR = "iqn.2026-11.test:client"


@dataclass
class Client:
    host: str
    port: int
    isid: bytes = bytes.fromhex("400000000001")
    initiator: str = INITIATOR
    sock: socket.socket = field(init=False)
    reader: PduReader = field(init=False)
    cmdsn: int = 1
    itt: int = 0
    expstatsn: int = 0
    tsih: int = 0
    keys: dict[str, str] = field(default_factory=dict)
    source: str | None = None  # the local address to connect from (another loopback address)
    cid: int = 0
    # MC/S: the connections of one session share CmdSN and ITTs (§4.2.2.1)
    group: list[Client] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.create_connection((self.host, self.port), timeout=10,
                                             source_address=(self.source, 0) if self.source else None)
        self.reader = PduReader(max_data=1 << 24)

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, raw: bytes) -> None:
        self.sock.sendall(raw)

    def send(self, pdu: Pdu) -> None:
        self.sock.sendall(b"".join(bytes(p) for p in frame(pdu, self.reader.digests)))

    def send_corrupt(self, pdu: Pdu, header: bool = False) -> None:
        """Send ``pdu`` with its data digest (or, ``header``, its header
        digest) wrong: digests must be on."""
        pieces = [bytearray(p) for p in frame(pdu, self.reader.digests)]
        bad = pieces[0] if header else pieces[-1]
        bad[-1] ^= 0xFF
        self.sock.sendall(b"".join(pieces))

    def recv(self, timeout: float = 10.0) -> Pdu | None:
        """The next PDU, or None when the target closed the connection."""
        self.sock.settimeout(timeout)
        while True:
            pdu = self.reader.next_pdu()
            if pdu is not None:
                # a Data-In without status or an R2T carries no StatSN of its own (§11.7.4, §11.8)
                if hasattr(pdu, "statsn") and not (isinstance(pdu, (DataIn, R2T)) and not getattr(
                        pdu, "status_present", False)):
                    self.expstatsn = (pdu.statsn + 1) & 0xFFFFFFFF  # type: ignore[attr-defined]
                return pdu
            data = self.sock.recv(1 << 20)
            if not data:
                return None
            self.reader.feed(data)

    def next_itt(self) -> int:
        self.itt += 1
        self._share()
        return self.itt

    def _share(self) -> None:
        for other in self.group:
            other.cmdsn, other.itt = self.cmdsn, self.itt

    def another(self, cid: int, **kw: object) -> Client:
        """A new connection (CID ``cid``) for this client's session, not yet
        logged in: :meth:`login` on it adds it to the session (§5.3.4)."""
        other = Client(self.host, self.port, isid=self.isid, initiator=self.initiator, cid=cid, **kw)  # type: ignore[arg-type]
        other.tsih, other.cmdsn, other.itt = self.tsih, self.cmdsn, self.itt
        if not self.group:
            self.group.append(self)
        self.group.append(other)
        other.group = self.group
        return other

    def kill(self) -> None:
        """Drop the connection as a failed link would: a reset, no Logout."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def login(self, target: str | None, chap: tuple[str, bytes] | None = None,
              algorithm: ChapAlgorithm = ChapAlgorithm.MD5, **keys: str) -> LoginResponse:
        """Log in (with CHAP when ``chap`` gives a name and secret, offering
        only ``algorithm``: MD5 unless told)."""
        self.keys = {}
        pairs = [("InitiatorName", self.initiator)]
        pairs += [("SessionType", "Discovery")] if target is None else [("TargetName", target)]
        pairs += [("AuthMethod", "CHAP" if chap else "None")]
        r = self._login_step(pairs, Stage.SECURITY, Stage.OPERATIONAL)
        if r.status_class:
            return r
        if chap is not None:
            r = self._login_step([("CHAP_A", str(int(algorithm)))], Stage.SECURITY, Stage.OPERATIONAL)
            if r.status_class:
                return r
            got = dict(decode_text(r.data))
            proof = response(algorithm, int(got["CHAP_I"]), chap[1], decode_binary(got["CHAP_C"], "C"))
            r = self._login_step([("CHAP_N", chap[0]), ("CHAP_R", encode_binary(proof))],
                                 Stage.SECURITY, Stage.OPERATIONAL)
            if r.status_class:
                return r
        op = {"HeaderDigest": "None", "DataDigest": "None", "MaxRecvDataSegmentLength": "262144"}
        op.update(keys)
        r = self._login_step(list(op.items()), Stage.OPERATIONAL, Stage.FULL_FEATURE)
        self.tsih = r.tsih
        return r

    def _login_step(self, pairs: list[tuple[str, str]], csg: int, nsg: int) -> LoginResponse:
        self.send(LoginRequest(immediate=True, transit=True, csg=csg, nsg=nsg, isid=self.isid, tsih=self.tsih,
                               itt=self.next_itt(), cid=self.cid, cmdsn=self.cmdsn, expstatsn=self.expstatsn,
                               data=encode_text(pairs)))
        r = self.recv()
        assert isinstance(r, LoginResponse), r
        self.keys.update(decode_text(r.data))  # every key the target sent in the whole login
        return r

    def command(self, cdb: bytes, *, read: int = 0, write: bytes = b"", immediate_len: int = 0,
                lun: int = 0, final: bool = True) -> int:
        """Send a SCSI Command; return its ITT. ``immediate_len`` bytes of
        ``write`` go as immediate data."""
        itt = self.next_itt()
        self.send(ScsiCommand(final=final, read=bool(read), write=bool(write), lun=lun << 48, itt=itt,
                              edtl=read or len(write), cmdsn=self.cmdsn, expstatsn=self.expstatsn,
                              cdb=cdb.ljust(16, b"\0"), data=write[:immediate_len]))
        self.cmdsn += 1
        self._share()
        return itt

    def data_out(self, itt: int, ttt: int, offset: int, data: bytes, final: bool = True, datasn: int = 0) -> None:
        self.send(DataOut(final=final, itt=itt, ttt=ttt, buffer_offset=offset, datasn=datasn,
                          expstatsn=self.expstatsn, data=data))

    def snack(self, type: int, itt: int = 0xFFFFFFFF, ttt: int = 0xFFFFFFFF, begrun: int = 0,
              runlength: int = 0, lun: int = 0) -> None:
        """A SNACK Request (RFC 7143 §11.16), ERL >= 1."""
        self.send(SnackRequest(type=type, itt=itt, ttt=ttt, begrun=begrun, runlength=runlength, lun=lun,
                               expstatsn=self.expstatsn))

    def text(self, pairs: list[tuple[str, str]]) -> None:
        self.send(TextRequest(itt=self.next_itt(), cmdsn=self.cmdsn, expstatsn=self.expstatsn,
                              data=encode_text(pairs)))
        self.cmdsn += 1
        self._share()

    def logout(self, reason: int = 0, cid: int | None = None) -> None:
        """Logout (§11.14): reason 0 closes the session, 1 the connection
        ``cid`` (this one unless told), 2 removes it for recovery."""
        self.send(LogoutRequest(immediate=True, reason=reason, itt=self.next_itt(),
                                cid=self.cid if cid is None else cid, cmdsn=self.cmdsn, expstatsn=self.expstatsn))

    def task_management(self, function: int, rtt: int = 0xFFFFFFFF, *, refcmdsn: int = 0, expdatasn: int = 0,
                        lun: int = 0) -> int:
        """An immediate Task Management Function Request (§11.5); its ITT."""
        itt = self.next_itt()
        self.send(TaskMgmtRequest(immediate=True, function=function, lun=lun << 48, itt=itt, rtt=rtt,
                                  cmdsn=self.cmdsn, expstatsn=self.expstatsn, refcmdsn=refcmdsn,
                                  expdatasn=expdatasn))
        return itt


def read10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)


def write10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0, lba, 0, blocks, 0)


__all__ = ["Client", "read10", "write10", "encode", "DigestSettings"]
