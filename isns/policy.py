"""Who may change what in the iSNS database: the two policies a server
runs under (RFC 4171 §5.6.1, §6.11; isns/visibility.py applies them).

``strict`` (the default) follows §5.6.1 to the letter: a message that
changes the database must come from a control node or from a node of the
entity it changes; only control nodes (configured, never self-declared)
manage discovery domains, see every node and register for management SCNs.

``open`` is open-isns isnsd's default (``Security = 0``, what Debian ships:
no key files): isnsd then binds every request to its "insecure" policy,
which carries the control-node mask (open-isns policy.c,
``isns_flyingpigs_powers``), so any source may:

- register objects into any entity, one call at a time, replace it or
  deregister its nodes, portals or the entity itself (register.c,
  deregister.c: ``isns_policy_validate_object_access`` accepts);
- register without naming an entity and have the objects join the entity
  of the source's node (register.c, "play nice with lazy clients");
- create, edit and remove any DD and DD set (dd.c);
- register for management SCNs (policy.c ``isns_policy_validate_scn_bitmap``);

and a node registered with the Control type bit sees every node (scope.c).
What stays: the per-source bounds (isns/limits.py, isns/context.py) and
control-node names believed only from control addresses.
"""

from __future__ import annotations

from enum import Enum


class Policy(Enum):
    """``isns.policy`` in bootsvc's config: its value is the word there."""

    STRICT = "strict"
    OPEN = "open"
