"""Random iSNS request sequences and what the registry made of them, so a
rewrite of the registry can be checked to answer byte for byte as before.

A sequence is drawn from a seed alone (never from the registry's state, so
a difference in behaviour shows as a different transcript, not as different
requests). Each step is a request (every function, good and bad: missing
source, mixed keys, REPLACE, portal groups, DD and DD-set changes, SCN
registrations and events) or a timer tick (expiry, ESI probes and
answers); halfway the registry is saved to an SQLite store and reloaded
into a fresh one. The transcript holds every response and notice as
encoded bytes, every event, the store's row count after each step and
``due``.

The registry walks its SCN registrants in set order, so which notice comes
first (and takes the next transaction ID) depends on string hashing: the
script runs itself with PYTHONHASHSEED=0.

tests/data/isns_replay.json holds one digest per seed, recorded from the
registry before the split (``--record``); ``--dump SEED`` prints one
transcript, to diff against another checkout::

    cd /work/baseline && python /work/wt-isns/tests/isns_replay.py --dump 17 > /tmp/a
    cd /work/wt-isns && python tests/isns_replay.py --dump 17 > /tmp/b
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())  # the checkout run from: its isns, not necessarily this file's

from isns.codec import Attr, Message, Port, address, encode_message, request  # noqa: E402
from isns.protocol import Flags, Function, Tag  # noqa: E402
from isns.registry import Registry  # noqa: E402
from isns.store import Store  # noqa: E402

DIGESTS = Path(__file__).with_name("data") / "isns_replay.json"
SEQUENCES = 300
STEPS = 60

ADMIN = "iqn.2026-11.test:admin"
NAMES = [f"iqn.2026-11.test:n{i}" for i in range(6)] + [ADMIN]
EIDS = ["e0", "e1", "e2", "e3"]
ADDRS = [address(a) for a in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::4")]
PORTS = [Port(3260), Port(3261), Port(3262, udp=True)]
FUNCTIONS = [Function.DEV_ATTR_REG] * 6 + [Function.DEV_ATTR_QRY] * 6 + [
    Function.DEV_GET_NEXT, Function.DEV_GET_NEXT, Function.DEV_DEREG, Function.DEV_DEREG, Function.DD_REG,
    Function.DD_REG, Function.DD_REG, Function.DD_DEREG, Function.DDS_REG, Function.DDS_REG, Function.DDS_DEREG,
    Function.SCN_REG, Function.SCN_REG, Function.SCN_DEREG, Function.SCN_EVENT]
QUERY_TAGS = [Tag.ENTITY_IDENTIFIER, Tag.ENTITY_PROTOCOL, Tag.TIMESTAMP, Tag.PORTAL_IP_ADDRESS, Tag.PORTAL_PORT,
              Tag.PORTAL_SYMBOLIC_NAME, Tag.ESI_INTERVAL, Tag.ISCSI_NAME, Tag.ISCSI_NODE_TYPE, Tag.ISCSI_ALIAS,
              Tag.ISCSI_SCN_BITMAP, Tag.PG_ISCSI_NAME, Tag.PG_TAG, Tag.DD_ID, Tag.DD_SYMBOLIC_NAME,
              Tag.DDS_ID, Tag.DDS_STATUS]


def _maybe(rnd: random.Random, p: float, *attrs: Attr) -> list[Attr]:
    return list(attrs) if rnd.random() < p else []


def _portal(rnd: random.Random) -> list[Attr]:
    return [Attr(Tag.PORTAL_IP_ADDRESS, rnd.choice(ADDRS)), Attr(Tag.PORTAL_PORT, rnd.choice(PORTS))]


def _registration(rnd: random.Random) -> tuple[list[Attr], list[Attr]]:
    keys = rnd.choice([[], [], [Attr(Tag.ENTITY_IDENTIFIER, rnd.choice(EIDS))],
                       [Attr(Tag.ISCSI_NAME, rnd.choice(NAMES))], _portal(rnd), [Attr(Tag.DD_ID, 1)]])
    ops = _maybe(rnd, 0.8, Attr(Tag.ENTITY_IDENTIFIER, rnd.choice(EIDS + [""])))
    ops += _maybe(rnd, 0.7, Attr(Tag.ENTITY_PROTOCOL, 2))
    ops += _maybe(rnd, 0.3, Attr(Tag.REGISTRATION_PERIOD, rnd.choice([0, 30, 100])))
    ops += _maybe(rnd, 0.1, Attr(Tag.MGMT_IP_ADDRESS, rnd.choice(ADDRS)))
    for _ in range(rnd.choice([0, 1, 1, 2])):
        ops += _portal(rnd) if rnd.random() < 0.95 else [Attr(Tag.PORTAL_IP_ADDRESS, rnd.choice(ADDRS))]
        ops += _maybe(rnd, 0.3, Attr(Tag.PORTAL_SYMBOLIC_NAME, rnd.choice(["p", "q"])))
        ops += _maybe(rnd, 0.3, Attr(Tag.ESI_INTERVAL, rnd.choice([0, 1, 5, 20])))
        ops += _maybe(rnd, 0.3, Attr(Tag.ESI_PORT, rnd.choice(PORTS)))
        ops += _maybe(rnd, 0.3, Attr(Tag.SCN_PORT, rnd.choice(PORTS)))
    for _ in range(rnd.choice([0, 1, 1, 1, 2, 3])):
        ops.append(Attr(Tag.ISCSI_NAME, rnd.choice(NAMES + [""])))
        ops += _maybe(rnd, 0.8, Attr(Tag.ISCSI_NODE_TYPE, rnd.choice([1, 2, 3, 4, 15])))
        ops += _maybe(rnd, 0.3, Attr(Tag.ISCSI_ALIAS, rnd.choice(["a", "b", None])))
        ops += _maybe(rnd, 0.2, Attr(Tag.ISCSI_SCN_BITMAP, rnd.randrange(256)))
        ops += _maybe(rnd, 0.1, Attr(Tag.ISCSI_AUTH_METHOD, rnd.choice(["CHAP", None])))
    for _ in range(rnd.choice([0, 0, 0, 1, 2])):
        ops += _maybe(rnd, 0.9, Attr(Tag.PG_ISCSI_NAME, rnd.choice(NAMES + [""])))
        ops += _maybe(rnd, 0.9, Attr(Tag.PG_PORTAL_IP_ADDR, rnd.choice(ADDRS)))
        ops += _maybe(rnd, 0.9, Attr(Tag.PG_PORTAL_PORT, rnd.choice(PORTS)))
        ops += _maybe(rnd, 0.7, Attr(Tag.PG_TAG, rnd.choice([1, 2, None])))
    ops += _maybe(rnd, 0.05, Attr(Tag.DD_ID, 1))
    return keys, ops


def _query_keys(rnd: random.Random) -> list[Attr]:
    return rnd.choice([
        [Attr(Tag.ISCSI_NAME, rnd.choice(NAMES))], [Attr(Tag.ISCSI_NAME, rnd.choice(NAMES))],
        [Attr(Tag.ISCSI_NAME)], [Attr(Tag.ENTITY_IDENTIFIER, rnd.choice(EIDS))], [Attr(Tag.ENTITY_IDENTIFIER)],
        _portal(rnd), [Attr(Tag.PORTAL_IP_ADDRESS), Attr(Tag.PORTAL_PORT)],
        [Attr(Tag.ISCSI_NODE_TYPE, rnd.choice([1, 2]))], [Attr(Tag.ISCSI_NAME), Attr(Tag.ISCSI_NODE_TYPE, 1)], [],
        [Attr(Tag.ISCSI_NAME, rnd.choice(NAMES)), Attr(Tag.PORTAL_PORT, PORTS[0])],
        [Attr(Tag.ISCSI_NAME, rnd.choice(NAMES)), Attr(Tag.ISCSI_NODE_TYPE, rnd.choice([1, 2]))],
        [Attr(Tag.ISCSI_NAME), Attr(Tag.ISCSI_ALIAS, rnd.choice(["a", "b"]))],
        [Attr(Tag.PG_ISCSI_NAME, rnd.choice(NAMES))], [Attr(Tag.PG_ISCSI_NAME)], [Attr(Tag.DD_ID, rnd.randrange(1, 4))],
        [Attr(Tag.DD_ID)], [Attr(Tag.DDS_ID, rnd.randrange(1, 3))], [Attr(Tag.DDS_ID)], [Attr(0x7777, 1)]])


def _query(rnd: random.Random) -> tuple[list[Attr], list[Attr]]:
    ops = [Attr(t) for t in rnd.sample(QUERY_TAGS, rnd.choice([0, 0, 1, 3, 6]))]
    return _query_keys(rnd), ops


def _get_next(rnd: random.Random) -> tuple[list[Attr], list[Attr]]:
    keys = rnd.choice([[Attr(Tag.ISCSI_NAME)], [Attr(Tag.ISCSI_NAME, rnd.choice(NAMES))],
                       [Attr(Tag.ENTITY_IDENTIFIER)], [Attr(Tag.ENTITY_IDENTIFIER, rnd.choice(EIDS))],
                       [Attr(Tag.PORTAL_IP_ADDRESS), Attr(Tag.PORTAL_PORT)], _portal(rnd),
                       [Attr(Tag.PG_ISCSI_NAME), Attr(Tag.PG_PORTAL_IP_ADDR), Attr(Tag.PG_PORTAL_PORT)],
                       [Attr(Tag.DD_ID)], [Attr(Tag.DD_ID, 1)], [Attr(Tag.DDS_ID)], [],
                       [Attr(Tag.ISCSI_NAME), Attr(Tag.DD_ID)]])
    ops = _maybe(rnd, 0.3, Attr(Tag.ISCSI_NODE_TYPE, rnd.choice([1, 2])))
    return keys, ops


def _dereg(rnd: random.Random) -> tuple[list[Attr], list[Attr]]:
    return [], rnd.choice([[Attr(Tag.ENTITY_IDENTIFIER, rnd.choice(EIDS))], [Attr(Tag.ISCSI_NAME, rnd.choice(NAMES))],
                           [Attr(Tag.ISCSI_NAME, rnd.choice(NAMES)), Attr(Tag.ISCSI_NAME, rnd.choice(NAMES))],
                           _portal(rnd), [Attr(Tag.DD_ID, 1)]])


def _dd_reg(rnd: random.Random) -> tuple[list[Attr], list[Attr]]:
    keys = rnd.choice([[], [], [Attr(Tag.DD_ID, rnd.randrange(1, 5))]])
    ops = _maybe(rnd, 0.6, Attr(Tag.DD_SYMBOLIC_NAME, rnd.choice(["dd-a", "dd-b", "dd-c"])))
    for _ in range(rnd.randrange(4)):
        if rnd.random() < 0.8:
            ops.append(Attr(Tag.DD_MEMBER_ISCSI_NAME, rnd.choice(NAMES)))
        else:
            ops.append(Attr(Tag.DD_MEMBER_ISCSI_INDEX, rnd.randrange(1, 30)))
    ops += _maybe(rnd, 0.2, Attr(Tag.DD_FEATURES, rnd.randrange(4)))
    return keys, ops


def _dd_dereg(rnd: random.Random) -> tuple[list[Attr], list[Attr]]:
    keys = rnd.choice([[Attr(Tag.DD_ID, rnd.randrange(1, 5))], [Attr(Tag.DD_ID, rnd.randrange(1, 5))], []])
    ops = [Attr(Tag.DD_MEMBER_ISCSI_NAME, rnd.choice(NAMES)) for _ in range(rnd.choice([0, 0, 1, 2]))]
    return keys, ops


def _dds_reg(rnd: random.Random) -> tuple[list[Attr], list[Attr]]:
    keys = rnd.choice([[], [], [Attr(Tag.DDS_ID, rnd.randrange(1, 4))]])
    ops = _maybe(rnd, 0.6, Attr(Tag.DDS_SYMBOLIC_NAME, rnd.choice(["s-a", "s-b"])))
    ops += _maybe(rnd, 0.6, Attr(Tag.DDS_STATUS, rnd.choice([0, 1])))
    ops += [Attr(Tag.DD_ID, rnd.randrange(1, 5)) for _ in range(rnd.randrange(3))]
    return keys, ops


def _dds_dereg(rnd: random.Random) -> tuple[list[Attr], list[Attr]]:
    keys = rnd.choice([[Attr(Tag.DDS_ID, rnd.randrange(1, 4))], []])
    return keys, [Attr(Tag.DD_ID, rnd.randrange(1, 5)) for _ in range(rnd.choice([0, 0, 1]))]


def _scn_reg(rnd: random.Random) -> tuple[list[Attr], list[Attr]]:
    keys = [Attr(Tag.ISCSI_NAME, rnd.choice(NAMES)) for _ in range(rnd.choice([1, 1, 1, 0, 2]))]
    return keys, _maybe(rnd, 0.9, Attr(Tag.ISCSI_SCN_BITMAP, rnd.choice([0, rnd.randrange(256)])))


def _scn_dereg(rnd: random.Random) -> tuple[list[Attr], list[Attr]]:
    return [Attr(Tag.ISCSI_NAME, rnd.choice(NAMES))], []


def _scn_event(rnd: random.Random) -> tuple[list[Attr], list[Attr]]:
    ops = []
    for _ in range(rnd.choice([0, 1, 1, 2])):
        ops += [Attr(Tag.ISCSI_SCN_BITMAP, rnd.choice([4, 8, 16, 1])), Attr(Tag.ISCSI_NAME, rnd.choice(NAMES))]
    return [], ops + _maybe(rnd, 0.1, Attr(Tag.ISCSI_NAME, NAMES[0]))


MAKERS = {Function.DEV_ATTR_REG: _registration, Function.DEV_ATTR_QRY: _query, Function.DEV_GET_NEXT: _get_next,
          Function.DEV_DEREG: _dereg, Function.DD_REG: _dd_reg, Function.DD_DEREG: _dd_dereg,
          Function.DDS_REG: _dds_reg, Function.DDS_DEREG: _dds_dereg, Function.SCN_REG: _scn_reg,
          Function.SCN_DEREG: _scn_dereg, Function.SCN_EVENT: _scn_event}


def random_message(rnd: random.Random, xid: int) -> Message:
    """One request (or, now and then, something that is not a good one)."""
    odd = rnd.random()
    if odd < 0.02:
        return Message(rnd.choice([0x42, Function.HEARTBEAT, Function.SCN, Function.ESI]), xid,
                       (Attr(Tag.ISCSI_NAME, NAMES[0]),))
    if odd < 0.04:
        return Message(Function.DEV_ATTR_QRY, xid, rnd.choice([(), (Attr(Tag.DELIMITER),),
                                                                (Attr(Tag.ENTITY_IDENTIFIER, "e0"),),
                                                                (Attr(Tag.ISCSI_NAME, ""),)]))
    function = rnd.choice(FUNCTIONS)
    keys, ops = MAKERS[function](rnd)
    flags = Flags.REPLACE if function == Function.DEV_ATTR_REG and rnd.random() < 0.2 else Flags(0)
    source = ADMIN if rnd.random() < 0.25 else rnd.choice(NAMES)
    return request(function, xid, Attr(Tag.ISCSI_NAME, source), keys, ops, flags)


def _message_text(msg: Message) -> str:
    return b"".join(encode_message(msg)).hex()


def transcript(seed: int, steps: int = STEPS) -> list[str]:
    """What the registry answered, sent, told and stored, step by step."""
    rnd = random.Random(seed)
    lines: list[str] = []
    config = {"control_nodes": {ADMIN}, "default_dd_visible": rnd.random() < 0.5,
              "open_dd_registration": rnd.random() < 0.3}

    def on_event(what: str, fields: dict[str, object]) -> None:
        lines.append(f"event {what} {fields!r}")

    reg = Registry(on_event=on_event, **config)  # type: ignore[arg-type]
    store = Store(":memory:")
    now = 1000.0
    for step in range(steps):
        now += rnd.choice([0, 0, 1, 3, 10, 40])
        if step == steps // 2:
            store.save(reg)
            reg = Registry(on_event=on_event, **config)  # type: ignore[arg-type]
            store.load(reg, now)
            lines.append("reloaded")
        if rnd.random() < 0.12:
            lines.append(f"expired {reg.expire(now)}")
            reg.esi_due(now)
            reg.due = reg.next_timer()
        elif rnd.random() < 0.05:
            reg.esi_answered(rnd.choice(EIDS), (rnd.choice(ADDRS), rnd.choice(PORTS)), now)
        else:
            reply = reg.handle(random_message(rnd, step + 1), now)
            lines.append("reply " + ("-" if reply is None else _message_text(reply)))
        for n in reg.take_notices():
            lines.append(f"notice {n.entity} {_message_text(n.message)} {[(str(a), str(p)) for a, p in n.targets]} "
                         f"{n.portal and (str(n.portal[0]), str(n.portal[1]))}")
        lines.append(f"saved {store.save(reg)} due {reg.due} next {reg.next_timer()}")
    store.close()
    return lines


def digest(seed: int) -> str:
    return hashlib.sha256("\n".join(transcript(seed)).encode()).hexdigest()


def main() -> None:
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", action="store_true", help=f"write {DIGESTS.name} from this checkout")
    parser.add_argument("--dump", type=int, metavar="SEED", help="print the transcript of one seed")
    args = parser.parse_args()
    if args.dump is not None:
        print("\n".join(transcript(args.dump)))
    elif args.record:
        DIGESTS.parent.mkdir(exist_ok=True)
        DIGESTS.write_text(json.dumps({"steps": STEPS, "digests": [digest(s) for s in range(SEQUENCES)]},
                                      indent=0) + "\n")
    else:
        recorded = json.loads(DIGESTS.read_text())["digests"]
        bad = [s for s in range(SEQUENCES) if digest(s) != recorded[s]]
        print(f"{SEQUENCES - len(bad)}/{SEQUENCES} sequences as recorded" + (f"; differ: {bad}" if bad else ""))
        sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
