"""One fuzz target per codec: a function taking the bytes a peer (or an
operator's config file) could send, feeding them through the codec and
the code that handles what it decodes, as the service does.

Each target catches its codec's documented errors (listed in its
docstring), the ones the service catches and answers or drops; anything
else that escapes is a bug, and so is a case that runs past its time
bound (tests/fuzzing.py). Each target has seeds: valid messages that the
mutator damages.

    TARGETS["dhcp"].run(data)      # raises only on a bug
    TARGETS["dhcp"].seeds()        # valid messages
"""

from __future__ import annotations

import functools
import ipaddress
import marshal
import random
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dnslib import EDNS0, DNSRecord
from scapy.layers.dhcp import BOOTP, DHCP

from bootsvc.config import ConfigError, load
from bootsvc.dhcp.leases import LeaseStore
from bootsvc.dhcp.message import DhcpFormatError, IPv4
from bootsvc.dhcp.pipe import Frames, PipeError
from bootsvc.dhcp.pipe import Tag as PipeTag
from bootsvc.dhcp.pipe import batch as pipe_batch
from bootsvc.dhcp.pipe import frame as pipe_frame
from bootsvc.dhcp.pipe import plain as pipe_plain
from bootsvc.dhcp.pipe import text as pipe_text
from bootsvc.dhcp.pipe import texts as pipe_texts
from bootsvc.dhcp.pipe import writes as pipe_writes
from bootsvc.dhcp.message import decode as dhcp_decode
from bootsvc.dhcp.message import encode as dhcp_encode
from bootsvc.dhcp.responder import Machines, Mode, Responder, UnknownPolicy
from bootsvc.dns.forward import fit, matches, udp_limit
from bootsvc.dns.zone import Outside, Zone
from bootsvc.http.message import HttpError, parse_head, response_head
from bootsvc.http.service import HttpService
from bootsvc.scripts import mac_of_script
from bootsvc.service import Health
from bootsvc.tftp.files import FileSource
from bootsvc.tftp.transfer import ReadTransfer, Request, TftpFormatError, parse_request
from bootsvc.tftp.transfer import decode as tftp_decode
from isns.codec import IsnsFormatError, Reassembler, encode_message, unpack_header
from isns.protocol import HEADER_SIZE
from isns.registry import Registry
from target.chap import ChapAuth, ChapSecret
from target.framing import DigestError, DigestSettings, PduReader, frame
from target.keys import KEYS, NOT_SETTLED, REJECT, KeyValueError, SessionParams, negotiate, renegotiate
from target.login import Login
from target.pdu import (LoginRequest, Pdu, PduFormatError, ScsiCommand, Stage, iter_ahs, NopOut, TextRequest,
                        DataOut, LogoutRequest, TaskMgmtRequest, SnackRequest, TmfFunction)
from target.limits import DATA_OUT_TIMEOUT
from target.recovery import SnackType
from target.session import DropReason, SessionFailure
from target.text import TextFormatError, decode_text, encode_text
from target.scsi.reservations import (PrIn, PrOut, ReservationConflict, Reservations, parse_prout,
                                      transport_id)
from target.scsi.sense import ScsiError
from tests.isns_replay import ADMIN, random_message
from tests.test_dhcp_responder import IPXE, NODE, PXE, SUBNET, planner
from tests.test_login import IQN_I, IQN_T, ISID, Ctx, FakeTarget
from tests.test_session_core import BLOCK, Initiator, read10, write10


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]
    tokens: tuple[bytes, ...] = ()  # words of the format, for the mutator


# -- SCSI: persistent reservation parameter lists -------------------------------------

_PR_NEXUSES = (("iqn.2026-11.io.bootsvc.fuzz:a", bytes(6), "iqn.2026-11.io.bootsvc.fuzz:t"),
               ("iqn.2026-11.io.bootsvc.fuzz:b", bytes([0x80, 0, 0, 0, 0, 1]), "iqn.2026-11.io.bootsvc.fuzz:t"))


def scsi_prout(data: bytes) -> None:
    """target/scsi/reservations.py: a run of PERSISTENT RESERVE OUT commands
    (parse_prout, Reservations.out) from two I_T nexuses, each followed by
    every PERSISTENT RESERVE IN. A command is 4 header bytes (bit 7 of the
    first: which nexus; low 3 bits: the service action; the second: SCOPE
    and TYPE; then the parameter list length) and its parameter list.
    Documented errors: ``ScsiError`` (CHECK CONDITION) and
    ``ReservationConflict``, as target/scsi/lun.py answers them."""
    pr = Reservations()
    pos = 0
    while pos + 4 <= len(data):
        nexus = _PR_NEXUSES[data[pos] >> 7]
        sa, scope_type, plen = data[pos] & 0x07, data[pos + 1], int.from_bytes(data[pos + 2:pos + 4], "big")
        params_bytes = data[pos + 4:pos + 4 + plen]
        pos += 4 + plen
        try:
            pr.out(nexus, sa, scope_type, parse_prout(sa, params_bytes), known=frozenset(_PR_NEXUSES))
        except (ScsiError, ReservationConflict):
            pass
        for action in PrIn:
            pr.read(action)
        assert pr.type is None or pr.type.all_registrants or pr.holder in pr.keys, "a holder must be registered"


def _prout_seeds() -> list[bytes]:
    def cmd(who: int, sa: int, pr_type: int, key: int, sa_key: int, flags: int = 0, tail: bytes = b"") -> bytes:
        body = struct.pack(">QQ4xBx2x", key, sa_key, flags) if sa != PrOut.REGISTER_AND_MOVE else (
            struct.pack(">QQxBxxI", key, sa_key, flags, len(tail)) + tail)
        return bytes([who << 7 | sa, pr_type]) + len(body).to_bytes(2, "big") + body

    move_to = transport_id(_PR_NEXUSES[1])
    return [
        cmd(0, PrOut.REGISTER_AND_IGNORE_EXISTING_KEY, 0, 0, 1) + cmd(1, PrOut.REGISTER, 0, 0, 2)
        + cmd(0, PrOut.RESERVE, 1, 1, 0) + cmd(1, PrOut.PREEMPT, 3, 2, 1) + cmd(1, PrOut.RELEASE, 3, 2, 0),
        cmd(0, PrOut.REGISTER, 0, 0, 7) + cmd(0, PrOut.RESERVE, 8, 7, 0) + cmd(1, PrOut.REGISTER, 0, 0, 9)
        + cmd(1, PrOut.PREEMPT_AND_ABORT, 5, 9, 0) + cmd(0, PrOut.CLEAR, 0, 7, 0),
        cmd(0, PrOut.REGISTER, 0, 0, 5) + cmd(0, PrOut.RESERVE, 3, 5, 0)
        + cmd(0, PrOut.REGISTER_AND_MOVE, 3, 5, 6, 0x02, move_to) + cmd(1, PrOut.RELEASE, 3, 6, 0),
    ]


# -- iSCSI: PDU framing and decoding -------------------------------------------------


def _reader_for(flags: int) -> tuple[PduReader, int]:
    """A reader set up as the first byte of a case says: header and data
    digests on or off, the declared data limit; and the size of the pieces
    the stream arrives in (a PDU split over reads is where framing breaks)."""
    reader = PduReader(max_data=(512, 8192, 262144, 8192)[flags >> 4 & 3], hard_limit=1 << 20)
    reader.digests = DigestSettings(header=bool(flags & 1), data=bool(flags & 2))
    return reader, (1, 7, 48, 1 << 20)[flags >> 2 & 3]


def _drain(reader: PduReader, take: Callable[[Pdu], bool]) -> bool:
    """Every PDU now whole, to ``take`` (False: stop the connection); errors
    handled as target/connection.py does. False when the stream is over."""
    while True:
        try:
            for pdu in reader.pdus():
                if not take(pdu):
                    return False
            return True
        except DigestError as e:
            if e.header:
                return False  # §7.8: the framing cannot be trusted past a bad header digest
        except PduFormatError as e:
            if not e.bhs:
                return False  # the stream cannot be followed any more


def _feed(data: bytes, reader: PduReader, chunk: int, take: Callable[[Pdu], bool]) -> None:
    for pos in range(0, len(data), chunk):
        reader.feed(data[pos:pos + chunk])
        if not _drain(reader, take):
            return


def _check_pdu(pdu: Pdu, digests: DigestSettings) -> bool:
    """What the session does with a PDU's parts: AHS, the full CDB, and
    sending one back (a Reject carries the header)."""
    try:
        iter_ahs(pdu.ahs)
        if isinstance(pdu, ScsiCommand):
            pdu.full_cdb  # noqa: B018 - joins the Extended CDB AHS
    except PduFormatError:
        pass
    frame(pdu, digests)
    return True


def iscsi_pdu(data: bytes) -> None:
    """target/framing.py PduReader and target/pdu.py decode on a byte
    stream; the first byte sets digests, data limit and read size.

    Documented errors: PduFormatError (OversizedPdu too) and DigestError,
    which the reader raises after consuming the PDU (the stream goes on)
    or with an empty ``bhs`` (the connection ends)."""
    if not data:
        return
    reader, chunk = _reader_for(data[0])
    _feed(data[1:], reader, chunk, lambda pdu: _check_pdu(pdu, reader.digests))


def _pdu_seeds() -> list[bytes]:
    cdb10 = bytes([0x28, 0, 0, 0, 0, 8, 0, 0, 1, 0])
    pdus: list[Pdu] = [
        NopOut(itt=1, data=b"ping"),
        ScsiCommand(read=True, itt=2, edtl=512, cdb=cdb10 + bytes(6)),
        ScsiCommand(write=True, itt=3, edtl=512, cdb=cdb10 + bytes(6), data=bytes(512)),
        ScsiCommand(itt=4, cdb=bytes(16), ahs=bytes([0, 5, 1, 0]) + bytes(4)),  # Extended CDB AHS
        DataOut(final=True, itt=3, ttt=7, buffer_offset=512, data=bytes(100)),
        TextRequest(itt=5, data=encode_text([("SendTargets", "All")])),
        TaskMgmtRequest(function=1, itt=6, rtt=2),
        LogoutRequest(itt=8),
        *_login_pdus(),
    ]
    seeds = []
    for flags in (0x00, 0x03, 0x0B, 0x14, 0x21):
        digests = DigestSettings(header=bool(flags & 1), data=bool(flags & 2))
        stream = [b"".join(bytes(p) for p in frame(pdu, digests)) for pdu in pdus]
        seeds += [bytes([flags]) + s for s in stream]
        seeds.append(bytes([flags]) + b"".join(stream))
    return seeds


# -- iSCSI: a session on two connections (MC/S, ERL 2) --------------------------------


def iscsi_session(data: bytes) -> None:
    """Full Feature Phase PDUs through target/session.py on a session with
    two connections at ErrorRecoveryLevel 2 (target/allegiance.py): each
    PDU goes to the connection its CmdSN's low bit names; a PDU whose ITT
    ends in 0xEE ends its connection first (a failure: tasks kept for
    TASK REASSIGN), 0xEF reinstates it; commands complete at once.

    Documented errors: the reader's (PduFormatError, DigestError) and
    SessionFailure (the connection ends: the transport's job)."""
    from target.session import Link
    i = Initiator(ErrorRecoveryLevel="2", MaxConnections="2")
    s = i.session
    s.bind(Link(1, "192.0.2.1:40001", ("192.0.2.2", 3260)), 77, i.now, 8192)

    def take(pdu: Pdu) -> bool:
        i.now += 1.0
        cid = getattr(pdu, "cmdsn", 0) & 1
        itt = getattr(pdu, "itt", 0) & 0xFF
        if itt == 0xEE:
            _perform(i, s.connection_lost(cid, DropReason.CONNECTION_LOST, i.now))
        elif itt == 0xEF:
            s.bind(Link(cid, "192.0.2.1:40009", ("192.0.2.2", 3260)), 5, i.now, 512)
        try:
            _perform(i, s.receive(pdu, i.now, cid))
        except SessionFailure:
            return False
        _perform(i, s.handle_timer(i.now))
        return not s.closed
    if data:
        reader = PduReader(max_data=262144, hard_limit=1 << 20)
        _feed(data, reader, 1 << 20, take)


def _perform(i: object, actions: list[object]) -> None:
    """Commands complete at once: a read with zeros, a write as written."""
    from target.actions import Execute
    from target.scsi import ScsiResult, ScsiStatus
    session = i.session  # type: ignore[attr-defined]
    for a in actions:
        if isinstance(a, Execute):
            cmd = a.task.cmd
            result = ScsiResult(ScsiStatus.GOOD, (bytes(min(cmd.edtl, 65536)),) if cmd.read else (),
                                data_out_length=len(a.data_out) if a.data_out is not None else None)
            _perform(i, session.command_done(a.task, result))


def _session_seeds() -> list[bytes]:
    cdb10 = bytes([0x28, 0, 0, 0, 0, 8, 0, 0, 16, 0])
    w10 = bytes([0x2A, 0, 0, 0, 0, 8, 0, 0, 4, 0])
    pdus: list[Pdu] = [
        ScsiCommand(read=True, itt=2, edtl=8192, cmdsn=2, cdb=cdb10 + bytes(6)),
        ScsiCommand(read=True, itt=3, edtl=8192, cmdsn=1, cdb=cdb10 + bytes(6)),
        ScsiCommand(write=True, itt=4, edtl=2048, cmdsn=3, cdb=w10 + bytes(6)),
        DataOut(final=True, itt=4, ttt=1, buffer_offset=0, data=bytes(2048)),
        # ERL 1's SNACKs (no CmdSN: on connection 0, where ITT 2's read went; each connection keeps its own)
        SnackRequest(type=SnackType.DATA_R2T, itt=2, begrun=0, runlength=1),
        SnackRequest(type=SnackType.STATUS, begrun=77, runlength=0),
        SnackRequest(type=SnackType.R_DATA, itt=2, ttt=9),
        SnackRequest(type=SnackType.DATA_R2T, itt=3, begrun=0),
        NopOut(itt=0x1EE, cmdsn=4, immediate=True),
        TaskMgmtRequest(function=TmfFunction.TASK_REASSIGN, itt=6, rtt=2, cmdsn=4, immediate=True),
        TaskMgmtRequest(function=TmfFunction.TASK_REASSIGN, itt=7, rtt=4, cmdsn=5, immediate=True),
        NopOut(itt=0x2EF, cmdsn=5, immediate=True),
        LogoutRequest(itt=8, reason=2, cid=0, cmdsn=5, immediate=True),
        LogoutRequest(itt=9, reason=1, cid=1, cmdsn=4, immediate=True),
        LogoutRequest(itt=10, reason=0, cmdsn=5),
    ]
    stream = [b"".join(bytes(p) for p in frame(pdu, DigestSettings())) for pdu in pdus]
    return [*stream, b"".join(stream)]


# -- iSCSI: error recovery (ERL 1) ----------------------------------------------------


def _recovering_session() -> Initiator:
    """A session at ErrorRecoveryLevel 1 with a long read done (kept for
    SNACKs, DataACK asked), a short one, and a write waiting for its data."""
    i = Initiator(InitialR2T="Yes", ImmediateData="No", ErrorRecoveryLevel="1")
    i.command(read10(0, 64), read=64 * BLOCK)  # ITT 1: 4 Data-In, DataACK TTT 1
    i.command(read10(0, 1), read=BLOCK)  # ITT 2
    i.command(write10(0, 16), write=bytes(8192))  # ITT 3: R2T TTT 2
    return i


def iscsi_recovery(data: bytes) -> None:
    """A PDU stream (SNACKs, Data-Outs, whatever the mutator makes of them)
    into a session at ERL 1, with header and data digests on, handled as
    target/connection.py does: a data digest error goes to
    Session.data_digest_error, a header digest error is discarded. Then
    time passes: whatever writes the stream left short of their data get
    their recovery R2Ts (§11.8), and every timer that fires moves on.

    Documented errors: the reader's, and SessionFailure (the connection
    ends); every bad SNACK or Data-Out is a Reject."""
    i = _recovering_session()
    if _recovery_stream(i, data):
        i.tick(3 * DATA_OUT_TIMEOUT)


def _recovery_stream(i: Initiator, data: bytes) -> bool:
    """Feed ``data`` to the session as iscsi_recovery says; False once the
    connection would have ended."""
    reader = PduReader(max_data=8192, hard_limit=1 << 20)
    reader.digests = DigestSettings(header=True, data=True)
    reader.feed(data)
    for _ in range(64):
        try:
            for pdu in reader.pdus():
                i.send(pdu)
            return True
        except DigestError as e:
            if e.header and not e.skipped:
                return False
            if not e.header:
                i.do(i.session.data_digest_error(e.bhs, str(e)))
        except PduFormatError as e:
            if not e.bhs:
                return False
            i.do(i.session.reject(e.bhs, e.reason, str(e)))
        except SessionFailure:
            return False
    return True


def _recovery_seeds() -> list[bytes]:
    digests = DigestSettings(header=True, data=True)
    pdus: list[Pdu] = [
        SnackRequest(type=SnackType.DATA_R2T, itt=1, begrun=1, runlength=2),
        SnackRequest(type=SnackType.DATA_R2T, itt=3, begrun=0),
        SnackRequest(type=SnackType.STATUS, begrun=502, runlength=0),
        SnackRequest(type=SnackType.DATA_ACK, ttt=1, begrun=2),
        SnackRequest(type=SnackType.R_DATA, itt=1, ttt=9),
        DataOut(itt=3, ttt=2, buffer_offset=0, datasn=0, data=bytes(2048)),
        DataOut(final=True, itt=3, ttt=2, buffer_offset=4096, datasn=2, data=bytes(4096)),
        NopOut(itt=9, expstatsn=505, data=b"ping"),
    ]
    stream = [b"".join(bytes(p) for p in frame(pdu, digests)) for pdu in pdus]
    bad = bytearray(stream[5])
    bad[-1] ^= 0xFF  # the Data-Out's data digest
    # the write's data stops short: its last Data-Out (F bit) never comes
    return [*stream, b"".join(stream), stream[5] + stream[6], bytes(bad) + stream[6], stream[5]]


# -- iSCSI: login and text keys ------------------------------------------------------


def _login_pdus() -> list[LoginRequest]:
    def req(pairs: list[tuple[str, str]], csg: int, nsg: int, **kw: object) -> LoginRequest:
        return LoginRequest(transit=True, csg=csg, nsg=nsg, isid=ISID, itt=1, cmdsn=10,
                            data=encode_text(pairs), **kw)  # type: ignore[arg-type]
    return [
        req([("InitiatorName", IQN_I), ("TargetName", IQN_T), ("SessionType", "Normal"),
             ("AuthMethod", "CHAP,None")], Stage.SECURITY, Stage.OPERATIONAL),
        req([("HeaderDigest", "CRC32C,None"), ("DataDigest", "None"), ("MaxRecvDataSegmentLength", "65536"),
             ("ImmediateData", "Yes"), ("InitialR2T", "No"), ("MaxBurstLength", "262144"),
             ("FirstBurstLength", "65536"), ("MaxConnections", "1"), ("ErrorRecoveryLevel", "0"),
             ("DefaultTime2Wait", "2"), ("OFMarker", "No"), ("X-foo", "1")], Stage.OPERATIONAL,
            Stage.FULL_FEATURE),
        req([("InitiatorName", IQN_I), ("SessionType", "Discovery")], Stage.OPERATIONAL, Stage.FULL_FEATURE),
        LoginRequest(cont=True, csg=Stage.OPERATIONAL, isid=ISID, itt=1, data=b"InitiatorName=" + IQN_I.encode()),
    ]


def _login_take(login: Login) -> Callable[[Pdu], bool]:
    def take(pdu: Pdu) -> bool:
        if not isinstance(pdu, LoginRequest):
            return False  # anything else during login ends the connection
        result = login.receive(pdu)
        frame(result.response, DigestSettings())
        return not result.failed and result.params is None
    return take


def iscsi_login(data: bytes) -> None:
    """Login PDUs through target/login.py Login.receive, one connection.

    Documented errors: the reader's (PduFormatError, DigestError);
    Login.receive itself answers every bad request with a Login Response
    (its LoginFailed never escapes)."""
    login = Login(Ctx([FakeTarget(IQN_T), FakeTarget("iqn.2026-11.test:acl", allowed=IQN_I)]))
    reader = PduReader(max_data=8192, hard_limit=8192)
    _feed(data, reader, 1 << 20, _login_take(login))


CHAP_AUTH = ChapAuth(ChapSecret("node01", b"forward-secret-1"), ChapSecret("bootsvc", b"reverse-secret-2"))


def iscsi_chap(data: bytes) -> None:
    """Login PDUs to a target that asks for mutual CHAP (target/chap.py
    through Login.receive): the security stage, CHAP_A/I/C/N/R in any order
    and shape. Documented errors: the reader's; every CHAP failure is a
    Login Response with status 0201, never an exception."""
    login = Login(Ctx([FakeTarget(IQN_T, auth=CHAP_AUTH)]))
    reader = PduReader(max_data=8192, hard_limit=8192)
    _feed(data, reader, 1 << 20, _login_take(login))


def _chap_seeds() -> list[bytes]:
    def req(pairs: list[tuple[str, str]]) -> bytes:
        pdu = LoginRequest(transit=True, csg=Stage.SECURITY, nsg=Stage.OPERATIONAL, isid=ISID, itt=1, cmdsn=10,
                           data=encode_text(pairs))
        return b"".join(bytes(p) for p in frame(pdu, DigestSettings()))
    first = req([("InitiatorName", IQN_I), ("TargetName", IQN_T), ("AuthMethod", "CHAP")])
    algorithm = req([("CHAP_A", "7,5")])
    answer = req([("CHAP_N", "node01"), ("CHAP_R", "0x" + "ab" * 32), ("CHAP_I", "7"),
                   ("CHAP_C", "0b" + "QUJDREVGR0hJSktMTU5PUA==")])
    return [first + algorithm + answer, first + algorithm, first, first + answer, algorithm + answer]


def _login_seeds() -> list[bytes]:
    pdus = [b"".join(bytes(p) for p in frame(pdu, DigestSettings())) for pdu in _login_pdus()]
    return [pdus[0] + pdus[1], pdus[2], pdus[3] + pdus[0], pdus[1], pdus[0]]


def iscsi_text(data: bytes) -> None:
    """target/text.py decode_text and target/keys.py negotiate on a data
    segment, each settled value kept as the login keeps it; and
    renegotiate, as a Text Request in Full Feature Phase gets it: a
    login-only key is never anything but Reject.

    Documented errors: TextFormatError (not key=value pairs) and
    KeyValueError (a value the target answers with Reject)."""
    params = SessionParams()
    try:
        pairs = decode_text(data)
    except TextFormatError:
        return
    for key, value in pairs:
        spec = KEYS.get(key)
        try:
            later = renegotiate(key, value)
        except KeyValueError:
            later = REJECT
        assert later == REJECT or (spec is None and not key.startswith("CHAP_")) or (
            spec is not None and spec.full_feature), (key, later)
        try:
            answer = negotiate(key, value)
        except KeyValueError:
            continue
        if answer is None:
            params.apply(key, value)
        elif answer not in NOT_SETTLED:
            params.apply(key, answer)
    encode_text(pairs)


def _text_seeds() -> list[bytes]:
    return [bytes(pdu.data) for pdu in _login_pdus()] + [
        encode_text([("MaxRecvDataSegmentLength", "0x10000"), ("MaxOutstandingR2T", "1"),
                     ("DataPDUInOrder", "Yes"), ("DataSequenceInOrder", "No"), ("TaskReporting", "RFC3720"),
                     ("iSCSIProtocolLevel", "1"), ("IFMarkInt", "2048~8192"), ("TargetAlias", "x")]),
        # what a Text Request may carry in Full Feature Phase, and what it may not
        encode_text([("ErrorRecoveryLevel", "1"), ("CHAP_A", "5"), ("InitiatorAlias", "y"),
                     ("MaxRecvDataSegmentLength", "4096"), ("X-com.example.k", "v")])]


# -- iSNS ---------------------------------------------------------------------------


def isns(data: bytes) -> None:
    """isns/codec.py on a TCP stream of PDUs (header, Reassembler, message
    decoding), each request through isns/registry.py Registry.handle and
    its response encoded, as isns/server.py does.

    Documented errors: IsnsFormatError (the server answers a format error
    and closes the connection). Registry.handle answers any request,
    refusals included, with a response."""
    registry = Registry(control_nodes={ADMIN}, default_dd_visible=bool(len(data) & 1))
    joined = Reassembler()
    pos, now = 0, 1000.0
    try:
        while len(data) - pos >= HEADER_SIZE:
            header = unpack_header(data[pos:pos + HEADER_SIZE])
            end = pos + HEADER_SIZE + header.length
            msg = joined.feed(header, data[pos + HEADER_SIZE:end])
            pos, now = end, now + 5
            if msg is None or msg.is_response:
                continue
            reply = registry.handle(msg, now)
            if reply is not None:
                encode_message(reply)
            registry.take_notices()
    except IsnsFormatError:
        return


def _isns_seeds() -> list[bytes]:
    rnd = random.Random(4171)
    return [b"".join(pdu for xid in range(n) for pdu in encode_message(random_message(rnd, xid)))
            for n in (1, 1, 1, 2, 3, 5, 8) for _ in range(8)]


# -- DHCP ---------------------------------------------------------------------------


def dhcp(data: bytes) -> None:
    """bootsvc/dhcp/message.py decode, then the Responder's answer (in the
    mode and unknown-machine policy the xid's last byte picks) encoded.

    Documented errors: DhcpFormatError ("nothing else escapes", says the
    module). The Responder answers or drops every decoded request."""
    try:
        req = dhcp_decode(data)
    except DhcpFormatError:
        return
    knobs = data[7]
    r = Responder([SUBNET], Machines({NODE.mac: NODE}), LeaseStore(":memory:"), planner,
                  mode=Mode.PROXY if knobs & 1 else Mode.AUTHORITATIVE,
                  unknown=UnknownPolicy.DISCOVER if knobs & 2 else UnknownPolicy.IGNORE)
    for now in (0.0, 1.0):  # twice: the second meets the lease and the tables the first left
        reply = r.handle(req, IPv4("10.77.0.1") if knobs & 4 else None, now)
        if reply is not None:
            dhcp_encode(reply)


def _dhcp_seeds() -> list[bytes]:
    stranger = "52:54:00:99:00:01"
    seeds = []
    for msg, opts, ciaddr in (("discover", PXE, "0.0.0.0"), ("discover", (), "0.0.0.0"),
                              ("request", (*IPXE, ("requested_addr", "10.77.0.11"), ("server_id", "10.77.0.1")),
                               "0.0.0.0"),
                              ("request", (("requested_addr", "10.77.0.50"),), "0.0.0.0"),
                              ("request", (), "10.77.0.11"), ("inform", (("param_req_list", [1, 3, 6, 66, 67]),),
                                                               "10.77.0.11"),
                              ("decline", (("requested_addr", "10.77.0.100"),), "0.0.0.0"),
                              ("release", (), "10.77.0.100")):
        for mac, xid in ((NODE.mac, 0x700), (stranger, 0x703), (NODE.mac, 0x705)):
            pkt = BOOTP(op=1, xid=xid, ciaddr=ciaddr, chaddr=bytes.fromhex(mac.replace(":", "")) + bytes(10))
            options = [("message-type", msg), *opts, ("max_dhcp_size", 1500), ("client_id", b"\x01" + bytes(6)),
                       ("hostname", b"node"), "end"]
            seeds.append(bytes(pkt / DHCP(options=options)))
    return seeds


def dhcp_pipe(data: bytes) -> None:
    """bootsvc/dhcp/pipe.py: bytes on the pipe between serve and its DHCP
    worker cut into frames; and a value made from them (nested tuples,
    lists, text, numbers, the pipe's own words), marshalled, decoded as
    each receiver decodes its frames, and its lease writes applied to a
    lease store (the worker's) and replayed into a copy (serve's).

    Not fuzzed: marshal and pickle themselves, which trust their input
    (a made-up length allocates it); the pipe's only writer is the process
    at its other end, which this program started (docs/dhcp-scaling.md).

    Documented errors: PipeError; ValueError and TypeError from a lease
    row of the wrong kind (the receivers turn them into PipeError)."""
    try:
        for _ in Frames().feed(data):
            pass
    except PipeError:
        pass
    payload = marshal.dumps(_pipe_value(random.Random(data), 3))
    for decode in (pipe_batch, pipe_writes, pipe_texts, pipe_text):
        try:
            value = decode(payload)
            if decode is pipe_batch:
                LeaseStore(":memory:").replay(value[1])  # type: ignore[index]
            elif decode is pipe_writes:
                LeaseStore(":memory:").apply(value)  # type: ignore[arg-type]
            elif decode is pipe_texts:
                [IPv4(a) for a in value]  # type: ignore[union-attr]
        except (PipeError, ValueError, TypeError):
            pass


_PIPE_WORDS = ("put", "drop", "seen", "forget", "bound", "offered", "dhcp.ack", "10.77.0.11", NODE.mac, "", "x")


def _pipe_value(r: random.Random, depth: int) -> object:
    """A value of the kinds marshal carries, made by ``r``."""
    pick = r.randrange(9 if depth else 5)
    if pick < 5:
        return (r.choice(_PIPE_WORDS), r.randrange(-2, 2**33), r.random() * 4e9, None, r.random() < 0.5)[pick]
    items = [_pipe_value(r, depth - 1) for _ in range(r.randrange(11))]
    if pick == 5:
        return items
    if pick == 6:
        return {str(_pipe_value(r, 0)): _pipe_value(r, depth - 1) for _ in range(r.randrange(4))}
    return tuple(items) if pick == 7 else (items, [_pipe_value(r, depth - 1)])


def _pipe_seeds() -> list[bytes]:
    event = ("dhcp.ack", 1.5, NODE.mac, "10.77.0.11", "node01", None, None, None, {"xid": 7, "ipxe": True})
    put = ("put", ("10.77.0.11", NODE.mac, "bound", 2e9, "node01"))
    return [pipe_plain(PipeTag.BATCH, ([event], [put])), pipe_plain(PipeTag.WRITES, [put, ("drop", ("10.77.0.11",))]),
            pipe_plain(PipeTag.SESSIONS, ["10.77.0.11"]) + pipe_plain(PipeTag.ADOPT, NODE.mac),
            pipe_plain(PipeTag.FAILED, "port 67: in use") + pipe_frame(PipeTag.READY)]


# -- TFTP ---------------------------------------------------------------------------


@functools.cache
def _tftp_files() -> FileSource:
    """A root with a small and an empty file, made once per process."""
    root = Path(tempfile.mkdtemp(prefix="bootsvc-fuzz-tftp-"))
    (root / "undionly.kpxe").write_bytes(bytes(range(256)) * 12)
    (root / "empty").write_bytes(b"")
    (root / "sub").mkdir()
    return FileSource([root])


def tftp(data: bytes) -> None:
    """bootsvc/tftp/transfer.py: a datagram as a request (parse_request,
    then the file it names, then the transfer it starts), and the same
    datagram as what a client sends to a transfer under way (in a window
    size and option state the datagram's length picks).

    Documented errors: TftpFormatError (not TFTP: dropped), PermissionError
    (a write request or a refused name: an ERROR is sent), OSError from
    opening the file (FileNotFoundError and the like: an ERROR is sent)."""
    try:
        req = parse_request(tftp_decode(data))
        payload = _tftp_files().open(req.filename)
        transfer = ReadTransfer(req, payload)
        transfer.start(0.0)
        transfer.on_ack(0, 0.5)
    except (TftpFormatError, OSError):  # PermissionError and FileNotFoundError are OSErrors
        pass
    size = len(data)
    running = ReadTransfer(Request("f", blksize=512, windowsize=1 + size % 4 * 3, wants_tsize=bool(size & 4)),
                           bytes(5000))
    running.start(0.0)
    try:
        running.on_datagram(data, 1.0)
    except TftpFormatError:
        pass
    running.prepare()
    running.handle_timer(10.0)


def _tftp_seeds() -> list[bytes]:
    def rrq(name: bytes, *options: bytes) -> bytes:
        return b"\0\x01" + name + b"\0octet\0" + b"".join(o + b"\0" for o in options)
    return [
        rrq(b"undionly.kpxe"), rrq(b"undionly.kpxe", b"blksize", b"1468", b"tsize", b"0"),
        rrq(b"undionly.kpxe", b"windowsize", b"8", b"timeout", b"3", b"blksize", b"65464"),
        rrq(b"empty", b"tsize", b"0"), rrq(b"sub/../undionly.kpxe"), rrq(b"missing.efi"),
        b"\0\x02undionly.kpxe\0octet\0", b"\0\x01undionly.kpxe\0netascii\0",
        b"\0\x04\0\x01", b"\0\x04\0\x00", b"\0\x04\xff\xff", b"\0\x05\0\x01File not found\0",
        b"\0\x03\0\x01" + bytes(512), b"\0\x06blksize\x00512\x00",
    ]


# -- DNS ----------------------------------------------------------------------------


@functools.cache
def _zone() -> Zone:
    hosts = {"node01": ipaddress.IPv4Address("10.77.0.11"), "node02": ipaddress.IPv4Address("10.77.0.12")}
    return Zone("lab", lambda: hosts, server=ipaddress.IPv4Address("10.77.0.1"))


def dns(data: bytes) -> None:
    """bootsvc/dns/zone.py Zone.respond (dnslib's parser and packer) over
    UDP or TCP as the length's parity says, forwarding on or off as its
    second bit says; a reply must parse back. A name outside the zone goes
    through what forwarding does with it (bootsvc/dns/forward.py: its UDP
    size, the check of a reply, the cut to that size) and is refused and
    failed.

    Documented errors: none; Zone.respond returns the reply (FORMERR for
    what dnslib cannot parse), None or Outside."""
    zone = _zone()
    reply = zone.respond(data, udp=bool(len(data) & 1), recursion=bool(len(data) & 2))
    if isinstance(reply, Outside):
        limit = udp_limit(reply.query)
        matches(data, data)
        assert len(fit(data, limit)) <= max(limit, len(data))
        replies = [zone.refused(reply), zone.failed(reply)]
    else:
        replies = [reply]
    for one in replies:
        if one is not None:
            DNSRecord.parse(one)


def _dns_seeds() -> list[bytes]:
    seeds = []
    for name, qtype in (("node01.lab", "A"), ("node01.lab", "AAAA"), ("NODE02.lab", "ANY"), ("lab", "SOA"),
                        ("lab", "NS"), ("ns.lab", "A"), ("ghost.lab", "A"), ("11.0.77.10.in-addr.arpa", "PTR"),
                        ("99.0.77.10.in-addr.arpa", "PTR"), ("example.com", "A")):
        q = DNSRecord.question(name, qtype)
        seeds.append(q.pack())
        q.add_ar(EDNS0(udp_len=4096))
        seeds.append(q.pack())
    seeds.append(DNSRecord.question("node01.lab", "A").reply().pack())  # a response: dropped
    return seeds


# -- HTTP ---------------------------------------------------------------------------


@functools.cache
def _http() -> HttpService:
    def scripts(name: str, client: str, local: str) -> str | None:
        return "#!ipxe\nsanboot\n" if mac_of_script(name) == NODE.mac else None
    return HttpService(_tftp_files(), scripts, lambda: Health(True, {"dhcp": "serving"}))


def http(data: bytes) -> None:
    """bootsvc/http/message.py parse_head on a request head (what comes
    before the first blank line, as the service reads it), then the
    service's routing (bootsvc/http/service.py _route) and the reply head.

    Documented errors: HttpError (answered with its status, then the
    connection is closed)."""
    head = data.split(b"\r\n\r\n", 1)[0]
    try:
        req = parse_head(head)
    except HttpError:
        return
    reply = _http()._route(req, "10.77.0.11", "10.77.0.1")
    response_head(reply.status, len(reply.body), reply.content_type, req.keep_alive)
    mac_of_script(req.path.lstrip("/"))


def _http_seeds() -> list[bytes]:
    return [
        b"GET /boot/52-54-00-77-00-01.ipxe HTTP/1.1\r\nHost: 10.77.0.1\r\nUser-Agent: iPXE/1.21\r\n\r\n",
        b"GET /files/undionly.kpxe?x=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"HEAD /files/sub/../empty HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n\r\n", b"GET /files/%2e%2e/etc/passwd HTTP/1.1\r\n\r\n",
        b"POST /boot/x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        b"GET /boot/52:54:00:77:00:01.ipxe HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    ]


# -- the YAML config ----------------------------------------------------------------


@functools.cache
def _config_dir() -> Path:
    base = Path(tempfile.mkdtemp(prefix="bootsvc-fuzz-config-"))
    (base / "disk.img").write_bytes(bytes(4096))
    (base / "profiles").mkdir()
    return base


def config(data: bytes) -> None:
    """bootsvc/config.py load on a config file of these bytes.

    Documented errors: ConfigError, naming file, line and key of every
    problem; an operator's typo must never end in a traceback."""
    path = _config_dir() / "bootsvc.yaml"
    path.write_bytes(data)
    try:
        load(path)
    except ConfigError:
        pass


CONFIG_SEED = b"""\
state_dir: /tmp/bootsvc-fuzz-state
iqn_prefix: iqn.2026-11.io.bootsvc.fuzz
domain: lab
profiles_dir: profiles
listen:
  dhcp: {interface: br0, address: 10.77.0.1}
  tftp: 10.77.0.1:69
  http: 10.77.0.1:80
  dns: 10.77.0.1:53
  iscsi: [10.77.0.1:3260, "[::1]:3261"]
  isns: 127.0.0.1:3205
dhcp:
  mode: authoritative
  unknown_machines: discover
  subnet: 10.77.0.0/24
  range: [10.77.0.100, 10.77.0.200]
  router: 10.77.0.1
  dns: [10.77.0.1]
  lease_time: 3600
default_profile: demo-linux
machines:
  52:54:00:77:00:11: {hostname: node01, ip: 10.77.0.11}
  52:54:00:77:00:12: {hostname: node02, ip: 10.77.0.12, profile: demo-linux-kernel}
iscsi: {nop_interval: 5, queue_depth: 64, portal_group_tag: 1}
tftp: {busy_poll_us: 50}
dns: {ttl: 30}
isns: {registration_period: 600, default_dd: visible, control_nodes: [iqn.2026-11.io.bootsvc.fuzz:admin]}
targets:
  - iqn: iqn.2026-11.io.bootsvc.fuzz:boot.extra
    alias: extra
    luns:
      - disk.img
      - {path: disk.img, read_only: true, block_size: 4096, lun: 5}
    initiators: [iqn.2026-11.io.bootsvc.fuzz:node01]
"""

CONFIG_TOKENS = (b": ", b"- ", b"\n", b"\n  ", b"\n    ", b"{", b"}", b"[", b"]", b",", b"&a ", b"*a", b"<<: *a",
                 b"!!binary ", b"!!set ", b"!!python/object:object ", b"!!str ", b"!!int ", b"!!float ",
                 b"null", b"~", b"true", b"-1", b"0x", b"1e400", b".nan", b"0o17", b"'", b'"', b"? ", b"|\n", b"%YAML",
                 b"\t", b"\0", b"\xff", b"52:54:00:77:00:11", b"10.77.0.0/33", b"[::1]:99999", b"iqn.", b"..",
                 b"state_dir", b"machines", b"targets", b"luns", b"path", b"listen", b"dhcp", b"subnets", b"profile")


def _config_seeds() -> list[bytes]:
    demo = (Path(__file__).resolve().parent.parent / "examples" / "demo.yaml").read_bytes()
    return [CONFIG_SEED, demo, b"", b"machines: {}\n", CONFIG_SEED.replace(b"  ", b"\t", 1)]


HTTP_TOKENS = (b"\r\n", b": ", b" ", b"%", b"%00", b"%ff", b"%2e%2e", b"?", b"/", b"..", b"HTTP/1.1", b"HTTP/2",
               b"Content-Length: ", b"Transfer-Encoding: ", b"Connection: ", b"close", b"keep-alive", b"\t")

TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("iscsi_pdu", iscsi_pdu, _pdu_seeds),
    Target("iscsi_session", iscsi_session, _session_seeds),
    Target("iscsi_login", iscsi_login, _login_seeds, (b"=", b"\0", b",", b"Yes", b"No", b"0x", b"None")),
    Target("iscsi_chap", iscsi_chap, _chap_seeds, (b"CHAP_A=", b"CHAP_I=", b"CHAP_C=0x", b"CHAP_C=0b", b"CHAP_R=0x",
                                                   b"CHAP_N=", b"AuthMethod=", b"\0", b",", b"=")),
    Target("iscsi_recovery", iscsi_recovery, _recovery_seeds),
    Target("iscsi_text", iscsi_text, _text_seeds, (b"=", b"\0", b",", b"Yes", b"No", b"0x", b"None", b"\xff")),
    Target("isns", isns, _isns_seeds),
    Target("dhcp", dhcp, _dhcp_seeds),
    Target("dhcp_pipe", dhcp_pipe, _pipe_seeds, (b"B", b"W", b"S", b"A", b"\0\0\0", b"\xff")),
    Target("tftp", tftp, _tftp_seeds, (b"\0", b"octet", b"blksize", b"tsize", b"windowsize", b"timeout", b"..")),
    Target("dns", dns, _dns_seeds),
    Target("http", http, _http_seeds, HTTP_TOKENS),
    Target("config", config, _config_seeds, CONFIG_TOKENS),
    Target("scsi_prout", scsi_prout, _prout_seeds, (b",i,0x", b"iqn.", b"\0", b"\x45", b"\x05")),
)}
