"""The iSNS database and what each request does to it (RFC 4171 §5.6.5),
without sockets or clocks: ``Registry.handle(message, now)`` returns the
response.

The entry point over the registry's parts:

- isns/database.py: the objects (§6: entities, portals, nodes, portal
  groups, DDs, DD sets) and their indexes;
- isns/visibility.py: who may see and change what (DDs, DD sets, control
  nodes);
- isns/handlers/: one function per request type;
- isns/notifier.py: who hears of a change (SCN, §5.6.5.8), ESI probes;
- isns/timers.py: registration periods (§6.2.6) and ESI (§5.6.5.13).

What the server must do besides answering is left in the registry:
``notices`` (SCNs and ESI probes to deliver) and ``dirty`` (objects the
store must write); ``on_event(what, fields)`` is told of each change and
refusal.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Generic, TypeVar

from . import timers
from .codec import Message, response
from .context import MAX_NODES, MAX_PER_SOURCE, MIN_ESI_INTERVAL, Context
from .database import Database, Dirty, PortalGroupKey
from .errors import IsnsError
from .events import OnEvent, ignore_event
from .handlers import HANDLERS
from .limits import DIRECT, Gate, Origin
from .notifier import Notifier
from .objects import DEFAULT_PERIOD, DiscoveryDomain, DiscoveryDomainSet, Entity, Node, PortalGroup
from .policy import Policy
from .protocol import Function, Status, Tag
from .scn import Address, Notice
from .timers import ESI_RETRIES
from .visibility import Visibility

__all__ = ["ESI_RETRIES", "MIN_ESI_INTERVAL", "IsnsError", "Policy", "Registry"]

T = TypeVar("T")


class _Part(Generic[T]):
    """An attribute of one of the registry's parts (isns/context.py), read
    and set as the registry's own: what callers had when the registry was
    one class."""

    def __init__(self, part: str = "") -> None:
        self.part = part

    def __set_name__(self, owner: type, name: str) -> None:
        path = ".".join(filter(None, ("_ctx", self.part)))
        self._holder = attrgetter(path)
        self._get = attrgetter(f"{path}.{name}")
        self.name = name

    def __get__(self, registry: Registry | None, owner: type | None = None) -> T:
        if registry is None:
            return self  # type: ignore[return-value]  # looked up on the class (help(), inspect)
        return self._get(registry)  # type: ignore[no-any-return]

    def __set__(self, registry: Registry, value: T) -> None:
        setattr(self._holder(registry), self.name, value)


_FUNCTIONS: dict[int, Function] = Function._value2member_map_  # type: ignore[assignment]


class Registry:
    """The iSNS database: ``handle`` answers a request; the server takes
    ``notices`` to send, the store writes what is ``dirty``, the timer
    calls ``expire`` and ``esi_due`` when ``due``."""

    def __init__(self, control_nodes: set[str] | None = None, default_dd_visible: bool = True,
                 open_dd_registration: bool = False, *, default_period: int = DEFAULT_PERIOD,
                 min_esi_interval: int = MIN_ESI_INTERVAL, on_event: OnEvent = ignore_event,
                 max_per_source: int = MAX_PER_SOURCE, max_nodes: int = MAX_NODES,
                 policy: Policy = Policy.STRICT) -> None:
        """``control_nodes``: the iSCSI names that see and may change
        everything; ``default_dd_visible``: nodes in no DD see each other;
        ``open_dd_registration``: any source may register DDs and DD sets;
        ``default_period``: the registration period (s) of entities that
        name none (0: never expire); ``min_esi_interval``: the shortest ESI
        interval (s) granted; ``max_per_source``: the entities a source
        other than a control node may register, and the portals in one of
        them; ``max_nodes``: the nodes in one of them; ``policy``: who may
        change what (isns/policy.py)."""
        db = Database()
        control = set() if control_nodes is None else control_nodes  # the caller's set: it may change it later
        visibility = Visibility(db, control, default_dd_visible, open_dd_registration, policy)
        self._refusals = Gate()  # refusals of network requests told at most once a second per status
        self._ctx = Context(db, visibility, Notifier(db, visibility), on_event, default_period, min_esi_interval,
                            max_per_source=max_per_source, max_nodes=max_nodes)

    # -- entry point ------------------------------------------------------------------

    def handle(self, msg: Message, now: float, origin: Origin = DIRECT) -> Message | None:
        """The response to ``msg`` (None for messages that get none);
        ``origin``: where it came from (isns/limits.py), for control-node
        rights and who registered an entity."""
        function = _FUNCTIONS.get(msg.function)  # as Function(...), without the enum machinery's call
        if function is None:
            return response(msg, Status.MESSAGE_NOT_SUPPORTED)
        if function is Function.HEARTBEAT:
            return None  # another server's announcement: no response (§5.6.5.14)
        handler = HANDLERS.get(function)
        if handler is None:
            return response(msg, Status.MESSAGE_NOT_SUPPORTED)
        source = msg.source
        if source is None or source.tag != Tag.ISCSI_NAME or not isinstance(source.value, str) or not source.value:
            return response(msg, Status.SOURCE_ABSENT)
        ctx = self._ctx
        ctx.origin = origin
        node = ctx.db.nodes.get(source.value)
        try:
            if not origin.control and ctx.visibility.is_control(source.value):
                # a control node's name alone is no credential: anyone can send it (§6.11.3)
                raise IsnsError(Status.SOURCE_UNAUTHORIZED,
                                f"control node {source.value} from {origin.host}, not a control address")
            if node is not None:  # any request from an entity's node refreshes its registration (§6.2.6)
                ctx.db.entities[node.entity].last_seen = now
            return handler(ctx, msg, source.value, now)
        except IsnsError as e:
            fields: dict[str, object] = {"function": function.name, "source": source.value,
                                         "status": e.status.name, "why": str(e)}
            if origin.host is not None:  # a client can be refused at will: it must not flood the log
                held_back = self._refusals.pass_(e.status.name, now)
                if held_back is not None:
                    ctx.on_event("isns.refused", {**fields, "peer": origin.host, "held_back": held_back})
            else:
                ctx.on_event("isns.refused", fields)
            return response(msg, e.status)
        finally:
            ctx.notifier.flush(now)

    def take_notices(self) -> list[Notice]:
        """The SCNs and ESI probes to send, handed over once."""
        return self._ctx.notifier.take()

    # -- timers (isns/timers.py) ----------------------------------------------------------

    def expire(self, now: float) -> list[str]:
        """Drop entities whose registration period passed without a refresh."""
        return timers.expire(self._ctx, now)

    def esi_due(self, now: float) -> None:
        """Queue the ESI probes that are due; drop portals that stopped answering."""
        timers.esi_due(self._ctx, now)

    def esi_answered(self, eid: str, portal: Address, now: float) -> None:
        """An ESI response came for ``portal`` of entity ``eid``."""
        timers.esi_answered(self._ctx.db, eid, portal, now)

    def next_timer(self) -> float:
        """When ``esi_due`` or ``expire`` next has work (inf: never)."""
        return timers.next_timer(self._ctx.db)

    # -- for the store ----------------------------------------------------------------------

    def restart_indexes(self) -> None:
        """After loading from the store: go on numbering after the highest
        index, and rebuild the lookup indexes."""
        self._ctx.db.restart_indexes()
        self._ctx.visibility.forget()

    def groups_of(self, entity: Entity) -> list[PortalGroup]:
        """The portal groups between an entity's nodes and its portals."""
        return self._ctx.db.groups_of(entity)

    # -- visibility (isns/visibility.py) -------------------------------------------------------

    def is_control(self, source: str) -> bool:
        return self._ctx.visibility.is_control(source)

    def sees(self, source: str, name: str) -> bool:
        """May ``source`` see the node ``name``?"""
        return self._ctx.visibility.sees(source, name)

    # -- the objects and settings, as attributes of the registry ---------------------------------

    entities: _Part[dict[str, Entity]] = _Part("db")
    nodes: _Part[dict[str, Node]] = _Part("db")
    portal_groups: _Part[dict[PortalGroupKey, PortalGroup]] = _Part("db")
    dds: _Part[dict[int, DiscoveryDomain]] = _Part("db")
    dd_sets: _Part[dict[int, DiscoveryDomainSet]] = _Part("db")
    portal_owner: _Part[dict[Address, str]] = _Part("db")
    dirty: _Part[set[Dirty]] = _Part("db")  # what changed since the store last wrote (the store empties it)
    notices: _Part[list[Notice]] = _Part("notifier")  # the SCNs and ESI probes waiting for take_notices()
    due: _Part[float] = _Part()  # no expiry or ESI probe is due before this (it may come early, never late)
    on_event: _Part[OnEvent] = _Part()
    default_period: _Part[int] = _Part()
    min_esi_interval: _Part[int] = _Part()
    max_per_source: _Part[int] = _Part()
    max_nodes: _Part[int] = _Part()
    control_nodes: _Part[set[str]] = _Part("visibility")
    default_dd_visible: _Part[bool] = _Part("visibility")
    open_dd_registration: _Part[bool] = _Part("visibility")
    policy: _Part[Policy] = _Part("visibility")
