"""The login phase of one connection (RFC 7143 §6, §11.12, §11.13).

Sans-I/O: :meth:`Login.receive` takes a Login Request and returns the Login
Response to send plus, once the initiator reaches Full Feature Phase, the
negotiated :class:`~target.keys.SessionParams`. The stage machine follows
§6.3 (CSG/NSG, Transit, Continue). The security stage (§6.3.1, §12.1.3)
runs CHAP (:mod:`target.chap`) when the target, or discovery, asks for it:
the initiator cannot leave that stage, nor skip it, before it has proved
its secret, and every CHAP failure is status 0201.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from .chap import ALL_ALGORITHMS, ChapAlgorithm, ChapAuth, ChapError, ChapExchange
from .keys import (IRRELEVANT, KEYS, NOT_SETTLED, REJECT, KeyValueError, Rule, SessionParams, declared_max_recv,
                   negotiate)
from .pdu import LoginRequest, LoginResponse, Stage
from .text import TextFormatError, decode_text, encode_text

# A peer that keeps the Continue bit set must not make us buffer without end.
MAX_LOGIN_TEXT = 64 << 10
# §13.12: what either side may send in one login PDU before it knows the
# other's MaxRecvDataSegmentLength; a longer answer goes in pieces (C bit).
LOGIN_MAX_DATA = 8192
# A connection must reach Full Feature Phase this soon after it was accepted.
LOGIN_TIMEOUT = 30.0


class LoginStatus(enum.IntEnum):
    """§11.13.5: Status-Class << 8 | Status-Detail."""

    SUCCESS = 0x0000
    TARGET_MOVED_TEMPORARILY = 0x0101
    TARGET_MOVED_PERMANENTLY = 0x0102
    INITIATOR_ERROR = 0x0200
    AUTHENTICATION_FAILURE = 0x0201
    AUTHORIZATION_FAILURE = 0x0202
    NOT_FOUND = 0x0203
    TARGET_REMOVED = 0x0204
    UNSUPPORTED_VERSION = 0x0205
    TOO_MANY_CONNECTIONS = 0x0206
    MISSING_PARAMETER = 0x0207
    CANT_INCLUDE_IN_SESSION = 0x0208
    SESSION_TYPE_NOT_SUPPORTED = 0x0209
    SESSION_DOES_NOT_EXIST = 0x020A
    INVALID_DURING_LOGIN = 0x020B
    TARGET_ERROR = 0x0300
    SERVICE_UNAVAILABLE = 0x0301
    OUT_OF_RESOURCES = 0x0302


class LoginFailed(Exception):
    """Ends the login with a status the initiator is told (§11.13.5)."""

    def __init__(self, status: LoginStatus, why: str) -> None:
        super().__init__(why)
        self.status = status


class TargetInfo(Protocol):
    name: str
    alias: str
    auth: ChapAuth | None  # None: no authentication asked (AuthMethod=None)

    def allows(self, initiator_name: str) -> bool: ...


class LoginContext(Protocol):
    """What the login needs to know of the target side."""

    portal_group_tag: int

    def find_target(self, name: str) -> TargetInfo | None: ...

    def admit(self, isid: bytes, tsih: int, params: SessionParams) -> int:
        """Called once, on the step into Full Feature Phase: create or
        reinstate the session and return its TSIH, or raise LoginFailed."""
        ...


@dataclass
class LoginResult:
    response: LoginResponse
    params: SessionParams | None = None  # set when Full Feature Phase begins
    failed: bool = False  # the connection closes after sending the response
    why: str = ""  # what made the login fail, for the operator


@dataclass
class Login:
    ctx: LoginContext
    target_prefs: dict[str, str] = field(default_factory=dict)
    statsn: int = 0
    params: SessionParams = field(default_factory=SessionParams)
    stage: Stage | None = None
    isid: bytes = b""
    tsih: int = 0
    cid: int = 0
    cmdsn: int = 0
    first: bool = True
    named: bool = False  # TargetPortalGroupTag (and alias) were sent
    declared: bool = False  # our MaxRecvDataSegmentLength was sent
    pending_text: bytearray = field(default_factory=bytearray)
    target: TargetInfo | None = None
    window: int = 1  # commands the session will accept, for MaxCmdSN at the switch to FFP
    started: float = 0.0  # when the connection was accepted (the transport's clock)
    timeout: float = LOGIN_TIMEOUT
    discovery_auth: ChapAuth | None = None  # what a discovery session must prove
    chap_algorithms: tuple[ChapAlgorithm, ...] = ALL_ALGORITHMS
    throttled: str = ""  # set: this source failed too often; CHAP is refused with this reason
    chap: ChapExchange | None = None  # once AuthMethod=CHAP is agreed
    outgoing: bytes = b""  # the rest of an answer longer than LOGIN_MAX_DATA (§6.1: sent on empty requests)
    held_transit: bool = False  # whether that answer ends in the step to the next stage

    def __post_init__(self) -> None:
        self.params.target_max_recv = declared_max_recv(self.target_prefs)

    def next_timer(self) -> float:
        """When the login runs out of time."""
        return self.started + self.timeout

    def handle_timer(self, now: float) -> bool:
        """Whether the login has run out of time; the transport then closes
        the connection (no Login Response: the initiator has gone quiet)."""
        return now >= self.next_timer()

    def receive(self, req: LoginRequest) -> LoginResult:
        try:
            return self._receive(req)
        except LoginFailed as e:
            return LoginResult(self._response(req, status=e.status), failed=True, why=str(e))

    def _receive(self, req: LoginRequest) -> LoginResult:
        if self.first:
            self._check_first(req)
        elif req.isid != self.isid or req.tsih != self.tsih or req.cid != self.cid:
            raise LoginFailed(LoginStatus.INITIATOR_ERROR, "ISID, TSIH or CID changed during login")
        elif req.csg != self.stage:
            raise LoginFailed(LoginStatus.INITIATOR_ERROR, f"CSG {req.csg} but the stage is {self.stage}")
        self._check_stages(req)
        self.stage = Stage(req.csg)
        if self.outgoing:
            return self._continue(req)

        self.pending_text += req.data
        if len(self.pending_text) > MAX_LOGIN_TEXT:
            raise LoginFailed(LoginStatus.OUT_OF_RESOURCES, "login text longer than 64 KiB")
        if req.cont:
            if req.transit:
                raise LoginFailed(LoginStatus.INITIATOR_ERROR, "both C and T bits set")
            return LoginResult(self._response(req))  # §6.1: empty answer until the text is whole
        try:
            pairs = decode_text(self.pending_text)
        except TextFormatError as e:
            raise LoginFailed(LoginStatus.INITIATOR_ERROR, str(e)) from e
        self.pending_text.clear()

        if self.first:
            self._identify(pairs)
            self.first = False
        answers = self._answer(req, pairs)
        transit = req.transit and self._may_leave(req)
        answers += self._declarations(req, transit)
        data = encode_text(answers)
        if len(data) > LOGIN_MAX_DATA:
            # e.g. hundreds of keys we answer NotUnderstood: never one PDU over the initiator's limit
            self.outgoing, self.held_transit = data[LOGIN_MAX_DATA:], transit
            return LoginResult(self._response(req, data=data[:LOGIN_MAX_DATA], cont=True))
        return self._finish(req, data, transit)

    def _continue(self, req: LoginRequest) -> LoginResult:
        """§6.1: the initiator asks for the rest of our answer with empty
        Login Requests; the last piece carries the stage transition."""
        if req.data or req.cont:
            raise LoginFailed(LoginStatus.INITIATOR_ERROR, "login text sent while the target's answer continues")
        piece, self.outgoing = self.outgoing[:LOGIN_MAX_DATA], self.outgoing[LOGIN_MAX_DATA:]
        if self.outgoing:
            return LoginResult(self._response(req, data=piece, cont=True))
        return self._finish(req, piece, self.held_transit and req.transit)

    def _finish(self, req: LoginRequest, data: bytes, transit: bool) -> LoginResult:
        if transit and req.nsg == Stage.FULL_FEATURE:
            self.tsih = self.ctx.admit(self.isid, self.tsih, self.params)
            return LoginResult(self._response(req, data=data, transit=True), self.params)
        if transit:
            self.stage = Stage(req.nsg)  # the next request continues in the stage we agreed to
        return LoginResult(self._response(req, data=data, transit=transit))

    @property
    def required(self) -> ChapAuth | None:
        """The credentials this login must prove: the target's, or for a
        discovery session the server's discovery ones (None: no CHAP)."""
        if self.params.session_type == "Discovery":
            return self.discovery_auth
        return self.target.auth if self.target is not None else None

    @property
    def authenticated(self) -> bool:
        return self.chap is not None and self.chap.done

    def _may_leave(self, req: LoginRequest) -> bool:
        """Whether the initiator may go on to the stage it asks for (§6.3):
        not out of the security stage before CHAP is done (we answer T=0
        and it goes on with CHAP), never past it without authenticating."""
        if self.required is None or self.authenticated:
            return True
        if req.csg == Stage.SECURITY and self.chap is not None:
            return False  # CHAP under way: stay in the security stage
        raise LoginFailed(LoginStatus.AUTHENTICATION_FAILURE,
                          f"{self.params.target_name or 'discovery'} requires CHAP, the initiator did not start it")

    def _check_first(self, req: LoginRequest) -> None:
        if req.version_min > 0:
            raise LoginFailed(LoginStatus.UNSUPPORTED_VERSION, f"version {req.version_min} unsupported")
        self.isid, self.tsih, self.cid, self.cmdsn = req.isid, req.tsih, req.cid, req.cmdsn
        self.statsn = req.expstatsn  # §11.13: any start is fine; following the initiator's helps traces

    def _check_stages(self, req: LoginRequest) -> None:
        if req.csg not in (Stage.SECURITY, Stage.OPERATIONAL):
            raise LoginFailed(LoginStatus.INITIATOR_ERROR, f"CSG {req.csg} is not a login stage")
        if req.transit and (req.nsg <= req.csg or req.nsg == 2):
            raise LoginFailed(LoginStatus.INITIATOR_ERROR, f"transit from {req.csg} to {req.nsg}")

    def _answer(self, req: LoginRequest, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        answers: list[tuple[str, str]] = []
        chap_keys: dict[str, str] = {}
        for key, value in pairs:
            spec = KEYS.get(key)
            if spec is not None and spec.leading_only and self.tsih:
                raise LoginFailed(LoginStatus.INITIATOR_ERROR, f"{key} on a non-leading connection")
            if key.startswith("CHAP_"):
                chap_keys[key] = value
                continue
            if key == "AuthMethod":
                answers.append((key, self._auth_method(req, value)))
                continue
            if spec is not None and spec.normal_only and self._discovery(pairs):
                answers.append((key, IRRELEVANT))
                continue
            try:
                answer = negotiate(key, value, self.target_prefs)
            except KeyValueError:
                answer = REJECT
                if spec is not None and spec.rule is Rule.DECLARATIVE:
                    raise LoginFailed(LoginStatus.INITIATOR_ERROR, f"bad value {key}={value!r}") from None
            if answer is None:
                self.params.apply(key, value)
                continue
            if answer not in NOT_SETTLED:
                self.params.apply(key, answer)
            answers.append((key, answer))
        if chap_keys:
            answers += self._chap(req, chap_keys)
        return answers

    def _auth_method(self, req: LoginRequest, offer: str) -> str:
        """§12: the first method in the initiator's list that the target
        accepts: exactly CHAP when it has credentials, else None."""
        if req.csg != Stage.SECURITY:
            raise LoginFailed(LoginStatus.INITIATOR_ERROR, "AuthMethod outside the security stage")
        required = self.required
        ours = "CHAP" if required is not None else "None"
        if ours not in (m.strip() for m in offer.split(",")):
            raise LoginFailed(LoginStatus.AUTHENTICATION_FAILURE,
                              f"{self.params.target_name or 'discovery'} requires AuthMethod={ours}, "
                              f"the initiator offered {offer[:64]!r}")
        self.params.auth_method = ours
        if required is not None and self.chap is None:
            self.chap = ChapExchange(required, self.chap_algorithms)
        return ours

    def _chap(self, req: LoginRequest, keys: dict[str, str]) -> list[tuple[str, str]]:
        if self.chap is None or req.csg != Stage.SECURITY:
            raise LoginFailed(LoginStatus.AUTHENTICATION_FAILURE, "CHAP keys without AuthMethod=CHAP agreed")
        if self.throttled and "CHAP_R" in keys:
            raise LoginFailed(LoginStatus.AUTHENTICATION_FAILURE, self.throttled)
        try:
            answers = self.chap.receive(keys)
        except ChapError as e:
            raise LoginFailed(LoginStatus.AUTHENTICATION_FAILURE, str(e)) from None
        if self.chap.done:
            self.params.chap_user = self.chap.auth.forward.user
        return answers

    def _discovery(self, pairs: list[tuple[str, str]]) -> bool:
        return dict(pairs).get("SessionType", self.params.session_type) == "Discovery"

    def _identify(self, pairs: list[tuple[str, str]]) -> None:
        """The first request names the initiator, the session type and the
        target; they are settled before anything else so that the security
        stage knows which credentials to ask for."""
        for key, value in pairs:
            if key in ("InitiatorName", "TargetName", "SessionType"):
                try:
                    negotiate(key, value, self.target_prefs)
                except KeyValueError:
                    raise LoginFailed(LoginStatus.INITIATOR_ERROR, f"bad value {key}={value!r}") from None
                self.params.apply(key, value)
        p = self.params
        if not p.initiator_name:
            raise LoginFailed(LoginStatus.MISSING_PARAMETER, "no InitiatorName")
        if p.session_type == "Discovery":
            return
        if not p.target_name:
            raise LoginFailed(LoginStatus.MISSING_PARAMETER, "no TargetName in a Normal session")
        target = self.ctx.find_target(p.target_name)
        if target is None:
            raise LoginFailed(LoginStatus.NOT_FOUND, f"no target {p.target_name}")
        if not target.allows(p.initiator_name):
            raise LoginFailed(LoginStatus.AUTHORIZATION_FAILURE,
                              f"{p.initiator_name} may not log in to {p.target_name}")
        self.target = target

    def _declarations(self, req: LoginRequest, transit: bool) -> list[tuple[str, str]]:
        """Declarative keys the target states once: its portal group tag
        (and alias) in its first response (§13.9), its
        MaxRecvDataSegmentLength (§13.12) only in the operational stage or
        on the step to Full Feature Phase: open-iscsi refuses operational
        keys in a security-stage response ("can't accept ... in security
        stage"), which a CHAP login has several of."""
        out = []
        if not self.named:
            out.append(("TargetPortalGroupTag", str(self.ctx.portal_group_tag)))
            if self.target is not None and self.target.alias:
                out.append(("TargetAlias", self.target.alias))
            self.named = True
        if not self.declared and (req.csg == Stage.OPERATIONAL or (transit and req.nsg == Stage.FULL_FEATURE)):
            out.append(("MaxRecvDataSegmentLength", str(self.params.target_max_recv)))
            self.declared = True
        return out

    def _response(self, req: LoginRequest, data: bytes = b"", transit: bool = False,
                  status: LoginStatus = LoginStatus.SUCCESS, cont: bool = False) -> LoginResponse:
        statsn = self.statsn
        self.statsn = (self.statsn + 1) & 0xFFFFFFFF
        final = transit and req.nsg == Stage.FULL_FEATURE and status == LoginStatus.SUCCESS
        maxcmdsn = (req.cmdsn + self.window - 1) & 0xFFFFFFFF if final else req.cmdsn
        return LoginResponse(
            transit=transit and status == LoginStatus.SUCCESS, cont=cont,
            csg=req.csg, nsg=req.nsg if transit else 0,
            version_max=0, version_active=0, isid=req.isid,
            tsih=self.tsih if final or req.tsih else 0,
            itt=req.itt, statsn=statsn, expcmdsn=req.cmdsn, maxcmdsn=maxcmdsn,
            status_class=status >> 8, status_detail=status & 0xFF, data=data,
        )
