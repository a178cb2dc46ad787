"""`bootsvc isns ...`: what the iSNS server holds, and the DDs by hand,
asked as bootsvc's own control node (the name the served config gives it)."""

from __future__ import annotations

import argparse
import json

from isns import IsnsClient, IsnsClientError, Objs

from .config import Config

KINDS = {"nodes": "node", "entities": "entity", "portals": "portal", "dds": "dd", "dd-sets": "dds"}
NODE_TYPES = {1: "target", 2: "initiator", 4: "control"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    isub = p.add_subparsers(dest="isns_command", required=True)
    lp = isub.add_parser("list", help="nodes (default), entities, portals, dds or dd-sets")
    lp.add_argument("what", nargs="?", default="nodes", choices=sorted(KINDS))
    lp.add_argument("--json", action="store_true", help="the objects as JSON, for scripts")
    dp = isub.add_parser("dd", help="discovery domains: list, add NAME MEMBER..., remove NAME [MEMBER...]")
    dsub = dp.add_subparsers(dest="dd_command", required=True)
    dsub.add_parser("list", help="every DD with its members").add_argument(
        "--json", action="store_true", help="the DDs as JSON, for scripts")
    da = dsub.add_parser("add", help="create a DD or add members to it")
    da.add_argument("name")
    da.add_argument("member", nargs="*", help="iSCSI names")
    dr = dsub.add_parser("remove", help="remove members from a DD, or the DD without members named")
    dr.add_argument("name")
    dr.add_argument("member", nargs="*", help="iSCSI names")


def run(args: argparse.Namespace, cfg: Config) -> int:
    server = cfg.isns.target
    if server is None:
        print("bootsvc isns: no iSNS server in the config (listen.isns or isns.server)")
        return 1
    try:
        with IsnsClient(server.host, server.port, cfg.control_node) as c:
            if args.isns_command == "list":
                _print(args.what, c.list(KINDS[args.what]), args.json)
            elif args.dd_command == "list":
                _print("dds", c.list("dd"), args.json)
            else:
                _dd(c, args)
    except (OSError, IsnsClientError) as e:
        print(f"bootsvc isns: {server}: {e}")
        return 1
    return 0


def _dd(c: IsnsClient, args: argparse.Namespace) -> None:
    dd = next((d for d in c.list("dd") if d.get("DD_SYMBOLIC_NAME") == args.name), None)
    if args.dd_command == "add":
        if dd is None:
            print(f"DD {args.name}: created with ID {c.dd_register(args.name, args.member)}")
        else:
            c.dd_add_members(int(dd["DD_ID"]), args.member)
            print(f"DD {args.name}: {len(args.member)} member(s) added")
        return
    if dd is None:
        raise IsnsClientError(0x000A, 9, f"no DD named {args.name}")
    if args.member:
        c.dd_remove_members(int(dd["DD_ID"]), args.member)
        print(f"DD {args.name}: {len(args.member)} member(s) removed")
    else:
        c.dd_deregister(int(dd["DD_ID"]))
        print(f"DD {args.name}: removed")


def _print(what: str, objs: Objs, as_json: bool = False) -> None:
    if as_json:
        print(json.dumps(objs, default=str, indent=1))
    elif what == "nodes":
        print(f"{'TYPE':10} {'ISCSI NAME':55} ALIAS")
        for o in objs:
            kind = NODE_TYPES.get(int(o.get("ISCSI_NODE_TYPE") or 0), str(o.get("ISCSI_NODE_TYPE")))
            print(f"{kind:10} {o.get('ISCSI_NAME', ''):55} {o.get('ISCSI_ALIAS') or ''}")
    elif what == "entities":
        print(f"{'ENTITY':40} {'PERIOD':>7}  INDEX")
        for o in objs:
            print(f"{o.get('ENTITY_IDENTIFIER', ''):40} {o.get('REGISTRATION_PERIOD', 0):>7}  {o.get('ENTITY_INDEX')}")
    elif what == "portals":
        print(f"{'ADDRESS':40} {'PORT':10} ESI/SCN")
        for o in objs:
            extra = ", ".join(f"{k.split('_')[0].lower()} {o[k]}" for k in ("ESI_PORT", "SCN_PORT") if o.get(k))
            print(f"{o.get('PORTAL_IP_ADDRESS', ''):40} {str(o.get('PORTAL_PORT', '')):10} {extra}")
    elif what == "dds":
        print(f"{'ID':>4}  {'NAME':30} MEMBERS")
        for o in objs:
            print(f"{o.get('DD_ID'):>4}  {o.get('DD_SYMBOLIC_NAME', ''):30} "
                  f"{', '.join(o.get('DD_MEMBER_ISCSI_NAME', [])) or '-'}")
    else:
        print(f"{'ID':>4}  {'NAME':30} {'ENABLED':8} DDS")
        for o in objs:
            print(f"{o.get('DDS_ID'):>4}  {o.get('DDS_SYMBOLIC_NAME', ''):30} "
                  f"{'yes' if int(o.get('DDS_STATUS') or 0) & 1 else 'no':8} {o.get('DD_ID', '')}")
