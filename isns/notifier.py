"""Who hears of a change (RFC 4171 §5.6.5.5, §5.6.5.8) and the messages
the server is to send on its own: SCNs gathered over one request and sent
as one message per recipient (isns/scn.py builds them), ESI probes
(§5.6.5.13). ``notices`` is what the server delivers."""

from __future__ import annotations

from dataclasses import dataclass, field

from .codec import Message
from .database import Database
from .objects import DiscoveryDomain, Node
from .protocol import NodeType, ScnBits
from .scn import Notice, ScnBatch
from .visibility import Visibility


@dataclass
class Notifier:
    db: Database
    visibility: Visibility
    notices: list[Notice] = field(default_factory=list)  # for the server to send
    _scn: ScnBatch = field(default_factory=ScnBatch)
    _queued: bool = False  # _scn holds events (_queue)

    def take(self) -> list[Notice]:
        out, self.notices = self.notices, []
        return out

    def xid(self) -> int:
        """The transaction ID of the next message the server starts (SCN or ESI)."""
        return self._scn.xid()

    def object_changed(self, bits: int, changed: Node) -> None:
        """Queue an object event for every registered node that may hear of
        it (§5.6.5.5): management registrations hear everything; others hear
        of nodes they see, narrowed by the TARGET/INITIATOR_AND_SELF bits."""
        sees = self.visibility.sees
        for recipient in map(self.db.nodes.__getitem__, self.db.scn_nodes):
            mask = recipient.scn_bitmap
            if not mask or not bits & mask:
                continue
            if not mask & ScnBits.MANAGEMENT_REGISTRATION and not sees(recipient.name, changed.name):
                continue
            if recipient is not changed and not _wants_type(mask, changed.type):
                continue
            self._queue(recipient.name, bits & mask, changed.name)

    def member_changed(self, bits: int, member: str, dd: DiscoveryDomain) -> None:
        """A DD membership change: told to the DD's registered members
        whatever their bitmap (as open-isns: otherwise a node would not learn
        that it lost sight of a target) and to management registrations, with
        the DD's ID."""
        for recipient in map(self.db.nodes.__getitem__, self.db.scn_nodes):
            mask = recipient.scn_bitmap
            if not mask:
                continue
            if mask & ScnBits.MANAGEMENT_REGISTRATION:
                self._queue(recipient.name, bits | ScnBits.MANAGEMENT_REGISTRATION, member, dd.id)
            elif recipient.name in dd.members:
                self._queue(recipient.name, bits, member)

    def probe(self, notice: Notice) -> None:
        """An ESI probe to send."""
        self.notices.append(notice)

    def _queue(self, recipient: str, bits: int, changed: str, dd: int | None = None) -> None:
        self._scn.add(recipient, bits, changed, dd)
        self._queued = True

    def flush(self, now: float) -> None:
        """The SCNs queued since the last flush become notices, one message
        per recipient, to its entity's SCN ports."""
        if not self._queued:
            return  # as after most requests: nothing to send (and no batch to empty)
        self._queued = False
        for recipient, message in self._scn.flush(now):
            self._scn_notice(recipient, message)

    def _scn_notice(self, recipient: str, message: Message) -> None:
        node = self.db.nodes.get(recipient)
        if node is None:
            return  # gone in the same request
        entity = self.db.entities[node.entity]
        targets = tuple((p.address, p.scn_port) for p in entity.portals.values() if p.scn_port)
        self.notices.append(Notice(entity.eid, message, targets))


def _wants_type(mask: int, changed: NodeType) -> bool:
    """Whether a registration's TARGET/INITIATOR_AND_SELF_ONLY bits let it
    hear of a change to a node of another type than asked."""
    if mask & ScnBits.TARGET_AND_SELF_ONLY and not changed & NodeType.TARGET:
        return False
    return not (mask & ScnBits.INITIATOR_AND_SELF_ONLY and not changed & NodeType.INITIATOR)
