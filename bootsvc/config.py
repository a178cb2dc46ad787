"""The bootsvc YAML config: loading, validation, and errors that name the
file, line and key (DESIGN.md "Config at a glance").

Only the sections whose services exist are checked in depth; sections that
later services own (dhcp, listen addresses other than iscsi) are accepted as
they are so one config file can grow with the product.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .address import HostPort
from .credentials import AuthMode, check_pair, parse_chap
from isns.policy import Policy
from target import ChapAlgorithm, ChapAuth, LunSpec, TargetConfigError, TargetSpec, check_iscsi_name
from target.keys import MAX_CONNECTIONS, MAX_ERROR_RECOVERY_LEVEL
from target.rbd import is_rbd

from . import SCSI_PRODUCT, SCSI_VENDOR
from .dhcp.responder import Mode, UnknownPolicy
from .dhcp.settings import DhcpSettings, check_fixed_ips, load_dhcp
from .dns.settings import FORWARD_KEYS, Forwarding, load_forwarding
from .host import HostNetwork, check_host
from .iscsi_portals import IscsiPortal, parse_portals
from .inventory import Machine, load_machines
from .names import domain_problem
from .profiles import SHIPPED, Profile, load_profiles
from .server_name import default_server_name, parse_server_name
from .storage_config import StorageSettings, check_rbd_lun, load_storage, with_storage_defaults
from .tftp import BUSY_POLL_US
from .yamlfile import Checker, ConfigError, LineMap, load_yaml, plain

__all__ = ["Config", "ConfigError", "IscsiSettings", "load"]

TOP_KEYS = {"state_dir", "domain", "iqn_prefix", "listen", "dhcp", "default_profile", "profiles_dir",
            "machines", "targets", "iscsi", "tftp", "dns", "isns", "recorder", "storage"}
RECORDER_KEYS = {"enabled", "history", "stall"}
DNS_KEYS = {"ttl"} | FORWARD_KEYS
TFTP_KEYS = {"roots", "busy_poll_us"}
LISTEN_KEYS = {"dhcp", "tftp", "http", "dns", "iscsi", "isns"}
TARGET_KEYS = {"iqn", "alias", "luns", "initiators", "auth", "chap", "mutual_chap"}
LUN_KEYS = {"path", "read_only", "block_size", "lun"}
ISCSI_KEYS = {"nop_interval", "nop_timeout", "queue_depth", "portal_group_tag", "max_connections",
              "error_recovery_level"}  # numbers
ISCSI_COUNTS = {"queue_depth": "commands", "portal_group_tag": "the tag", "max_connections": "connections",
                "error_recovery_level": "an ErrorRecoveryLevel"}  # those that count
# counts whose bound is not 65535: the highest ErrorRecoveryLevel the target
# agrees to (RFC 7143 §13.20; target/recovery.py, target/allegiance.py)
ISCSI_HIGHEST = {"error_recovery_level": MAX_ERROR_RECOVERY_LEVEL}
ISCSI_NOT_ZERO = {"portal_group_tag": "must be 1 or more (SCSI reserves target port 0)",
                  "max_connections": "must be 1 or more (a session has at least one connection)"}
ISCSI_AUTH_KEYS = {"chap_algorithms", "discovery_chap", "discovery_mutual_chap"}
ISCSI_ADVERTISE = "advertise"  # the portal machines are sent to (a floating address: docs/scale-out.md)
CHAP_ALGORITHMS = {"sha3-256": ChapAlgorithm.SHA3_256, "sha256": ChapAlgorithm.SHA256, "sha1": ChapAlgorithm.SHA1,
                   "md5": ChapAlgorithm.MD5}
ISNS_KEYS = {"server", "registration_period", "default_dd", "control_nodes", "control_addresses", "policy", "name"}


@dataclass(frozen=True)
class TftpSettings:
    host: str
    port: int
    roots: tuple[Path, ...]
    busy_poll_us: int = BUSY_POLL_US  # how long a lone transfer polls for each ACK before sleeping

    @property
    def busy_poll(self) -> float:
        """busy_poll_us in seconds, as the TFTP service takes it."""
        return self.busy_poll_us / 1e6


@dataclass(frozen=True)
class IscsiSettings:
    portals: tuple[IscsiPortal, ...] = ()
    nop_interval: float = 15.0
    nop_timeout: float = 30.0
    queue_depth: int = 128
    portal_group_tag: int = 1
    # MC/S and error recovery: the most an initiator is granted, min(initiator's,
    # this) (Debian's initiators ask 1 connection and ERL 0); error_recovery_level
    # 0 turns SNACK, digest error recovery and connection recovery off
    max_connections: int = MAX_CONNECTIONS
    error_recovery_level: int = MAX_ERROR_RECOVERY_LEVEL
    # CHAP hashes accepted, in no order (the initiator's preference decides, RFC 7143 §12.1.3)
    chap_algorithms: tuple[ChapAlgorithm, ...] = tuple(CHAP_ALGORITHMS.values())
    discovery_auth: ChapAuth | None = None  # None: discovery sessions are open (they show names only)
    # the portal a machine's root-path (so its iBFT, so its OS's logins) names;
    # None: the address the machine reached this server at
    advertise: HostPort | None = None

    @property
    def key_preferences(self) -> dict[str, str]:
        """The login keys the config bounds (RFC 7143 §13.2 MaxConnections,
        §13.20 ErrorRecoveryLevel): the target offers at most these."""
        return {"MaxConnections": str(self.max_connections), "ErrorRecoveryLevel": str(self.error_recovery_level)}


@dataclass(frozen=True)
class RecorderSettings:
    """The flight recorder (bootsvc/recorder): boots kept per machine, and
    seconds without a step after which an unfinished boot has failed."""

    history: int = 20
    stall: int = 90
    enabled: bool = True  # false: no recorder (bench/recorder_cost.py measures what it costs)


@dataclass(frozen=True)
class IsnsSettings:
    """listen.isns (our own iSNS server) and the isns section: where the
    target registers (our own server unless ``server`` names another),
    and the server's policy."""

    listen: HostPort | None = None
    server: HostPort | None = None
    registration_period: int = 0  # seconds an entity stays without a refresh; 0: until deregistered
    default_dd_visible: bool = False  # nodes in no DD see each other (open-isns's default DD)
    control_nodes: tuple[str, ...] = ()  # iSCSI names allowed to manage DDs (isnsadm's SourceName)
    # where those names are believed from, besides loopback and the server's own address
    control_addresses: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    policy: Policy = Policy.STRICT  # who may change what (isns/policy.py, docs/security.md)
    name: str | None = None  # this server's name (bootsvc/server_name.py); None: the default

    @property
    def target(self) -> HostPort | None:
        """The iSNS server the target registers with."""
        if self.server is not None:
            return self.server
        if self.listen is None:
            return None
        local = "127.0.0.1" if self.listen.host in ("0.0.0.0", "") else "::1" if self.listen.host == "::" \
            else self.listen.host
        return HostPort(local, self.listen.port)


@dataclass(frozen=True)
class Config:
    """A loaded config, never changed once loaded: a reload loads a new
    one and the fleet applies the difference (bootsvc/fleet_diff.py)."""

    path: Path
    state_dir: Path
    iqn_prefix: str
    domain: str
    iscsi: IscsiSettings
    targets: tuple[TargetSpec, ...]
    profiles: Mapping[str, Profile] = field(default_factory=lambda: MappingProxyType({}))
    machines: Mapping[str, Machine] = field(default_factory=lambda: MappingProxyType({}))
    default_profile: str | None = None
    dhcp: DhcpSettings | None = None
    tftp: TftpSettings | None = None
    http: HostPort | None = None  # listen.http; None: off
    dns: HostPort | None = None  # listen.dns; None: off
    dns_ttl: int = 60
    isns: IsnsSettings = field(default_factory=IsnsSettings)
    recorder: RecorderSettings = field(default_factory=RecorderSettings)
    dns_forward: Forwarding = field(default_factory=Forwarding)  # dns.forward, dns.allow
    warnings: tuple[str, ...] = field(default=(), compare=False)  # file:line: warning: key: message
    storage: StorageSettings = field(default_factory=StorageSettings)  # storage: (bootsvc/storage_config.py)

    @property
    def recorder_db(self) -> Path:
        return self.state_dir / "recorder.db"

    @property
    def control_node(self) -> str:
        """bootsvc's own iSCSI name at the iSNS server: it registers the
        targets and manages the machines' DDs; one per server (isns.name),
        so that servers sharing an iSNS server keep their own entities."""
        return f"{self.iqn_prefix}:bootsvc.{self.server_name}"

    @property
    def server_name(self) -> str:
        return self.isns.name or default_server_name(self.state_dir)

    @property
    def images_dir(self) -> Path:
        return self.state_dir / "images"

    @property
    def overlays_dir(self) -> Path:
        return self.state_dir / "overlays"


def load(path: str | Path, host: HostNetwork | None = None) -> Config:
    """Read and check a config file; raise ConfigError listing every problem.
    With ``host``, the listen section must also fit that host (check_host)."""
    path = Path(path)
    doc = load_yaml(path)
    c = Checker(path)
    c.unknown(doc, TOP_KEYS, "")
    if host is not None:
        check_host(c, doc, host)

    # relative to the config file, as every other path in it
    state_dir = path.parent / _text(c, doc, "state_dir", "/var/lib/bootsvc")
    iqn_prefix, domain = _names(c, doc)
    iscsi = _iscsi(c, doc)
    listen = doc.get("listen")
    if listen is not None and (lm := c.mapping(doc, "listen", listen)) is not None:
        c.unknown(lm, LISTEN_KEYS, "listen.")
        iscsi = replace(iscsi, portals=_portals(c, lm, iscsi.portal_group_tag))
    iscsi = _iscsi_advertise(c, doc, iscsi)

    storage = _storage(c, doc, path.parent)
    targets = with_storage_defaults(_targets(c, doc, path.parent), storage)
    seen = {t.iqn for t in targets}
    profiles = _profiles(c, doc, path.parent)
    default_profile = doc.get("default_profile")
    if default_profile is not None and not isinstance(default_profile, str):
        c.err(doc, "default_profile", f"expected a profile name, got {plain(default_profile)}")
        default_profile = None
    elif default_profile is not None and default_profile not in profiles:
        c.err(doc, "default_profile", f"no profile {plain(default_profile)} (have: {', '.join(sorted(profiles))})")
    machines = load_machines(c, doc, iqn_prefix, set(profiles), default_profile)
    for m in machines.values():
        if m.target_iqn in seen:
            c.at(m.line, f"machines.{m.mac}.target", f"{m.target_iqn} is also in targets")
    dhcp = load_dhcp(c, doc, listen, domain)
    tftp = _tftp(c, doc, listen, path.parent, state_dir)
    http = _listen(c, listen, "http", 80)
    dns = _listen(c, listen, "dns", 53)
    ttl = _dns_ttl(c, doc)
    forwarding = _dns_forward(c, doc, dns, dhcp)
    if dhcp is not None:
        _check_dhcp_fits(c, doc, dhcp, machines, profiles, default_profile, tftp is not None or http is not None)
    isns = _isns(c, doc, listen)
    recorder = _recorder(c, doc)
    c.raise_if_any()
    return Config(path, state_dir, iqn_prefix, domain, iscsi, targets, MappingProxyType(profiles),
                  MappingProxyType(machines), default_profile, dhcp, tftp, http, dns, ttl, isns, recorder,
                  forwarding, tuple(c.warnings), storage=storage)


def _storage(c: Checker, doc: LineMap, base: Path) -> StorageSettings:
    return load_storage(c, doc, base)


def _text(c: Checker, doc: LineMap, key: str, default: str) -> str:
    """A top-level word or path; an empty ``key:`` is a mistake, not the
    text "None" (a state_dir named None beside the config)."""
    value = doc.get(key, default)
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
        return str(value)
    c.err(doc, key, f"expected text, got {plain(value) or 'nothing'}")
    return default


def _names(c: Checker, doc: LineMap) -> tuple[str, str]:
    """iqn_prefix and domain."""
    iqn_prefix = _text(c, doc, "iqn_prefix", "iqn.2026-11.io.bootsvc")
    try:
        check_iscsi_name(iqn_prefix)
    except TargetConfigError as e:
        c.err(doc, "iqn_prefix", str(e))
    domain = _text(c, doc, "domain", "lab")
    if (problem := domain_problem(domain)) is not None:
        c.err(doc, "domain", problem)
    return iqn_prefix, domain


def _check_dhcp_fits(c: Checker, doc: LineMap, dhcp: DhcpSettings, machines: Mapping[str, Machine],
                     profiles: Mapping[str, Profile], default_profile: str | None, boot_files: bool) -> None:
    """The DHCP settings against the rest: fixed addresses, the profile
    unknown machines boot, and a way to hand out boot files and scripts."""
    check_fixed_ips(c, dhcp, machines.values())
    if dhcp.unknown is UnknownPolicy.DEFAULT and default_profile is None:
        c.err(doc["dhcp"], "dhcp.unknown_machines", "default needs default_profile (the profile such machines boot)")
    if dhcp.mode is Mode.PROXY and not boot_files:
        c.err(doc["dhcp"], "dhcp.mode", "proxy needs listen.tftp or listen.http: iPXE takes a proxy's boot options "
              "only with a boot file, its iPXE script")
    if not boot_files:
        _check_script_delivery(c, doc, machines, profiles,
                               default_profile if dhcp.unknown is UnknownPolicy.DEFAULT else None)


def _check_script_delivery(c: Checker, doc: LineMap, machines: Mapping[str, Machine],
                           profiles: Mapping[str, Profile], adopting: str | None) -> None:
    """Machines with CHAP get their secret in their iPXE script: bootsvc
    handing out boot options (DHCP) with neither HTTP nor TFTP to serve the
    script would leave them unable to log in (iPXE is told a script URL)."""
    chap = sorted(m.hostname for m in machines.values()
                  if m.profile in profiles and profiles[m.profile].auth is not AuthMode.NONE)
    if adopting in profiles and profiles[adopting].auth is not AuthMode.NONE:
        chap.append("the machines unknown_machines: default adopts")
    if chap:
        c.err(doc, "listen", f"{len(chap)} machine(s) with CHAP ({', '.join(chap[:3])}{', ...' if len(chap) > 3 else ''})"
                             " get their secret in an iPXE script, served over listen.http or listen.tftp: set one, "
                             "or give their profile auth: none")


def _recorder(c: Checker, doc: LineMap) -> RecorderSettings:
    section = doc.get("recorder")
    if section is None or (m := c.mapping(doc, "recorder", section)) is None:
        return RecorderSettings()
    c.unknown(m, RECORDER_KEYS, "recorder.")
    enabled = m.get("enabled", True)
    if not isinstance(enabled, bool):
        c.err(m, "recorder.enabled", f"expected true or false, got {plain(enabled)}")
        enabled = True
    return RecorderSettings(c.integer(m, "history", "recorder.history", 20, 10_000, "boots per machine"),
                            c.integer(m, "stall", "recorder.stall", 90, 86_400, "seconds"), enabled)


def _targets(c: Checker, doc: LineMap, base: Path) -> tuple[TargetSpec, ...]:
    targets: list[TargetSpec] = []
    raw_targets = doc.get("targets", [])
    if not isinstance(raw_targets, list):
        c.err(doc, "targets", "expected a list of targets")
        raw_targets = []
    seen: set[str] = set()
    for i, t in enumerate(raw_targets):
        spec = _target(c, doc, i, t, base)
        if spec is None:
            continue
        if spec.iqn in seen:
            c.err(t, f"targets[{i}].iqn", f"{spec.iqn} is defined twice")
        seen.add(spec.iqn)
        targets.append(spec)
    return tuple(targets)


def _profiles(c: Checker, doc: LineMap, base: Path) -> dict[str, Profile]:
    """The shipped profiles and those of profiles_dir (which win)."""
    profile_dirs = [SHIPPED]
    if doc.get("profiles_dir"):
        profile_dirs.append(base / str(doc["profiles_dir"]))
        if not os.path.isdir(profile_dirs[-1]):  # os.path's: False, not OSError, for a name too long
            c.err(doc, "profiles_dir", f"{profile_dirs[-1]} is not a directory")
    try:
        return load_profiles(profile_dirs)
    except ConfigError as e:
        c.problems.extend(e.problems)
        return {}


def _dns_ttl(c: Checker, doc: LineMap) -> int:
    ttl = 60
    if (dm := doc.get("dns")) is not None and (dm := c.mapping(doc, "dns", dm)) is not None:
        c.unknown(dm, DNS_KEYS, "dns.")
        ttl = c.integer(dm, "ttl", "dns.ttl", ttl, (1 << 31) - 1, "seconds")
    return ttl


def _dns_forward(c: Checker, doc: LineMap, listen: HostPort | None, dhcp: DhcpSettings | None) -> Forwarding:
    """dns.forward and dns.allow (bootsvc/dns/settings.py); off without listen.dns."""
    section = doc.get("dns")
    m = section if isinstance(section, LineMap) else None  # _dns_ttl says what else is wrong with it
    forwarding = load_forwarding(c, m, listen, dhcp.subnets if dhcp else ())
    return forwarding if listen is not None else Forwarding()


def _portals(c: Checker, listen: LineMap, first_tag: int) -> tuple[IscsiPortal, ...]:
    """listen.iscsi: one portal or a list of them, each in a portal group
    (bootsvc/iscsi_portals.py)."""
    texts = []
    raw = listen.get("iscsi", [])
    for text_portal in raw if isinstance(raw, list) else [raw]:
        try:
            texts.append(_host_port_text(text_portal))
        except ValueError as e:
            c.err(listen, "listen.iscsi", str(e))
    portals, problems = parse_portals(texts, max(first_tag, 1))
    for problem in problems:
        c.err(listen, "listen.iscsi", problem)
    return tuple(portals)


def _iscsi(c: Checker, doc: LineMap) -> IscsiSettings:
    """The iscsi section: numbers >= 0, each of its default's type."""
    settings = IscsiSettings()
    if (im := doc.get("iscsi")) is None or (im := c.mapping(doc, "iscsi", im)) is None:
        return settings
    c.unknown(im, ISCSI_KEYS | ISCSI_AUTH_KEYS | {ISCSI_ADVERTISE}, "iscsi.")
    settings = _iscsi_auth(c, im, settings)
    for key in ISCSI_KEYS & set(im):
        default = getattr(settings, key)
        if isinstance(default, int):  # a count: 1.5 commands is a mistake, not 1
            settings = replace(settings, **{key: c.integer(im, key, f"iscsi.{key}", default,
                                                           ISCSI_HIGHEST.get(key, 65535), ISCSI_COUNTS[key])})
            if key in ISCSI_NOT_ZERO and getattr(settings, key) == 0:
                c.err(im, f"iscsi.{key}", ISCSI_NOT_ZERO[key])
            continue
        value = im[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            c.err(im, f"iscsi.{key}", f"expected a number of seconds >= 0, got {plain(value)}")
        else:
            settings = replace(settings, **{key: float(value)})
    return settings


def _iscsi_advertise(c: Checker, doc: LineMap, settings: IscsiSettings) -> IscsiSettings:
    """iscsi.advertise: ``ADDRESS[:PORT]``, the portal named in machines'
    root-paths (RFC 4173) instead of the server's own address: a floating
    address that moves to another server when this one dies, so a running
    machine's OS logs in again there. Its port defaults to the first
    listen.iscsi portal's. It must be an address this server listens on
    (one of listen.iscsi, or any when a portal listens on all addresses)."""
    im = doc.get("iscsi")
    if not isinstance(im, dict) or ISCSI_ADVERTISE not in im:
        return settings
    key, raw = f"iscsi.{ISCSI_ADVERTISE}", im[ISCSI_ADVERTISE]
    port = settings.portals[0].port if settings.portals else 3260
    try:
        advertised = HostPort.parse(_host_port_text(raw), default_port=port, what="portal")
        if ipaddress.ip_address(advertised.host).is_unspecified:
            raise ValueError("a wildcard names no server")
    except ValueError:
        c.err(im, key, f"expected an IP address (and :PORT) of this server's iSCSI portal, got {plain(raw)}")
        return settings
    listened = {(p.host, p.port) for p in settings.portals}
    wildcard = {(w, advertised.port) for w in ("0.0.0.0", "::")} & listened
    if not settings.portals:
        c.err(im, key, "needs listen.iscsi: machines are sent to a portal this server serves")
    elif not wildcard and (advertised.host, advertised.port) not in listened:
        c.err(im, key, f"{advertised} is not one of listen.iscsi's portals "
                       f"({', '.join(str(p) for p in settings.portals)}); list it there too")
    return replace(settings, advertise=advertised)


def _iscsi_auth(c: Checker, im: LineMap, settings: IscsiSettings) -> IscsiSettings:
    """iscsi.chap_algorithms (e.g. [sha256, sha3-256] to refuse MD5, which
    iPXE needs) and the CHAP a discovery session must pass."""
    algorithms = im.get("chap_algorithms")
    if algorithms is not None:
        if not isinstance(algorithms, list) or not algorithms or \
                not all(isinstance(a, str) and a.lower() in CHAP_ALGORITHMS for a in algorithms):
            c.err(im, "iscsi.chap_algorithms", f"expected a list of {', '.join(CHAP_ALGORITHMS)}, got {plain(algorithms)}")
        else:
            settings = replace(settings, chap_algorithms=tuple(CHAP_ALGORITHMS[a.lower()] for a in algorithms))
    chap = parse_chap(c, im, "discovery_chap", "iscsi")
    mutual = parse_chap(c, im, "discovery_mutual_chap", "iscsi")
    check_pair(c, im, "iscsi.discovery", chap, mutual)
    if mutual is not None and chap is None:
        c.err(im, "iscsi.discovery_mutual_chap", "needs iscsi.discovery_chap too")
    elif chap is not None and (mutual is None or mutual.secret != chap.secret):
        settings = replace(settings, discovery_auth=ChapAuth(chap, mutual))
    return settings


def _isns(c: Checker, doc: LineMap, listen: Any) -> IsnsSettings:
    listen_at = _listen(c, listen, "isns", 3205)
    section = doc.get("isns")
    if section is None or (m := c.mapping(doc, "isns", section)) is None:
        return IsnsSettings(listen_at)
    c.unknown(m, ISNS_KEYS, "isns.")
    server = None
    if m.get("server") is not None:
        try:
            server = HostPort.parse(_host_port_text(m["server"]), default_port=3205)
        except ValueError as e:
            c.err(m, "isns.server", str(e))
    period = c.integer(m, "registration_period", "isns.registration_period", 0, (1 << 32) - 1,
                       "seconds, 0: never expire")
    default_dd = m.get("default_dd", "hidden")
    if default_dd not in ("hidden", "visible"):
        c.err(m, "isns.default_dd", f"expected hidden or visible, got {plain(default_dd)}")
    controls = m.get("control_nodes", [])
    if not isinstance(controls, list):
        c.err(m, "isns.control_nodes", "expected a list of iSCSI names")
        controls = []
    for name in controls:
        try:
            check_iscsi_name(str(name))
        except TargetConfigError as e:
            c.err(m, "isns.control_nodes", str(e))
    return IsnsSettings(listen_at, server, period, default_dd == "visible", tuple(map(str, controls)),
                        _control_addresses(c, m), _isns_policy(c, m), parse_server_name(c, m))


def _isns_policy(c: Checker, m: LineMap) -> Policy:
    """isns.policy: strict (RFC 4171 §5.6.1, the default) or open (as
    open-isns isnsd: any source changes any entity and DD)."""
    given = m.get("policy", Policy.STRICT.value)
    try:
        return Policy(given)
    except ValueError:
        c.err(m, "isns.policy", "expected strict or open" + (f", got {given}" if isinstance(given, str) else ""))
        return Policy.STRICT


def _control_addresses(c: Checker, m: LineMap) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """isns.control_addresses: IP addresses or networks (CIDR) a control
    node's name is believed from (docs/security.md)."""
    given = m.get("control_addresses", [])
    if not isinstance(given, list):
        c.err(m, "isns.control_addresses", "expected a list of IP addresses or networks")
        return ()
    networks = []
    for value in given:
        try:
            networks.append(ipaddress.ip_network(str(value), strict=False))
        except ValueError:
            c.err(m, "isns.control_addresses", f"{plain(value)} is not an IP address or network")
    return tuple(networks)


def _listen(c: Checker, listen: Any, key: str, default_port: int) -> HostPort | None:
    """listen.KEY as HOST[:PORT]; None when absent (the service is off)."""
    if not isinstance(listen, LineMap) or listen.get(key) is None:
        return None
    try:
        return HostPort.parse(_host_port_text(listen[key]), default_port=default_port)
    except ValueError as e:
        c.err(listen, f"listen.{key}", str(e))
        return None


def _host_port_text(value: Any) -> str:
    """HOST[:PORT] as written; ValueError for a list or mapping (whose text is Python's)."""
    if isinstance(value, (list, dict)):
        raise ValueError(f"expected HOST:PORT, got {plain(value)}")
    return str(value)


def _tftp(c: Checker, doc: LineMap, listen: Any, base: Path, state_dir: Path) -> TftpSettings | None:
    """listen.tftp (HOST:PORT) and the tftp section's roots (default:
    Debian's iPXE binaries in /usr/lib/ipxe, and state_dir/boot where
    bootsvc puts boot files it makes, like the demo's kernel)."""
    portal = _listen(c, listen, "tftp", 69)
    if portal is None:
        return None
    roots = [Path("/usr/lib/ipxe"), state_dir / "boot"]
    busy_poll_us = TftpSettings.busy_poll_us
    section = doc.get("tftp")
    if section is not None and (t := c.mapping(doc, "tftp", section)) is not None:
        c.unknown(t, TFTP_KEYS, "tftp.")
        if (raw := t.get("roots")) is not None:  # absent: the defaults
            given = raw if isinstance(raw, list) else [raw]
            if not all(isinstance(r, str) for r in given):
                c.err(t, "tftp.roots", "expected a directory or a list of directories")
                given = []
            roots = [p if p.is_absolute() else base / p for p in map(Path, given)]
            for r in roots:
                if not os.path.isdir(r):
                    c.err(t, "tftp.roots", f"{r} is not a directory")
        busy_poll_us = c.integer(t, "busy_poll_us", "tftp.busy_poll_us", busy_poll_us, 100_000,
                                 "microseconds, 0: off")
    return TftpSettings(portal.host, portal.port, tuple(roots), busy_poll_us)


def _target(c: Checker, doc: LineMap, i: int, t: Any, base: Path) -> TargetSpec | None:
    where = f"targets[{i}]"
    if not isinstance(t, LineMap):
        c.at(doc.lines.get("targets", doc.line), where, "expected a mapping with iqn and luns")
        return None
    c.unknown(t, TARGET_KEYS, f"{where}.")
    iqn = str(t.get("iqn", ""))
    try:
        check_iscsi_name(iqn)
    except TargetConfigError as e:
        c.err(t, f"{where}.iqn", str(e))
    luns: list[LunSpec] = []
    raw_luns = t.get("luns")
    if not isinstance(raw_luns, list) or not raw_luns:
        c.err(t, f"{where}.luns", "expected a non-empty list of LUNs")
        raw_luns = []
    for j, lun in enumerate(raw_luns):
        spec = _lun(c, t, f"{where}.luns[{j}]", lun, base)
        if spec is not None:
            luns.append(spec)
    initiators = t.get("initiators")
    allowed = None
    if initiators is not None:
        if not isinstance(initiators, list) or not all(isinstance(x, str) for x in initiators):
            c.err(t, f"{where}.initiators", "expected a list of initiator IQNs")
        else:
            allowed = frozenset(initiators)
    return TargetSpec(iqn=iqn, luns=tuple(luns), alias=str(t.get("alias", "")), allowed_initiators=allowed,
                      vendor=SCSI_VENDOR, product=SCSI_PRODUCT, auth=_target_auth(c, t, where))


def _target_auth(c: Checker, t: LineMap, where: str) -> ChapAuth | None:
    """A config target's CHAP: ``chap:`` (and ``mutual_chap:``), or an
    explicit ``auth: none``. Secure by default: one that says neither is an
    error, not a disk anyone on the LAN may write."""
    chap, mutual = parse_chap(c, t, "chap", where), parse_chap(c, t, "mutual_chap", where)
    check_pair(c, t, where, chap, mutual)
    auth = t.get("auth")
    if auth not in (None, "none"):
        c.err(t, f"{where}.auth", f"expected none (CHAP is set with chap: and mutual_chap:), got {plain(auth)}")
    elif auth == "none" and (chap or mutual):
        c.err(t, f"{where}.auth", "auth: none and chap: together")
    elif mutual is not None and chap is None:
        c.err(t, f"{where}.mutual_chap", "mutual_chap needs chap: too")
    elif auth is None and chap is None and "chap" not in t:
        c.err(t, f"{where}", "give chap: {user: ..., secret: ...} (and mutual_chap: for mutual CHAP), "
                             "or auth: none to serve it without authentication")
    if chap is None or (mutual is not None and mutual.secret == chap.secret):
        return None
    return ChapAuth(chap, mutual)


def _lun(c: Checker, t: LineMap, lw: str, lun: Any, base: Path) -> LunSpec | None:
    """One entry of a target's luns: a path, or a mapping with path."""
    if isinstance(lun, str):
        lun_path = lun
        lun = LineMap.empty(t.lines.get("luns", t.line))
        lun["path"] = lun_path
    if not isinstance(lun, LineMap) or "path" not in lun:
        c.at(t.lines.get("luns", t.line), lw, "expected a path or a mapping with path")
        return None
    c.unknown(lun, LUN_KEYS, f"{lw}.")
    path = str(lun["path"])
    if is_rbd(path):  # an RBD image, not a file (target/rbd.py)
        check_rbd_lun(c, lun, f"{lw}.path", path)
    else:
        p = Path(path)
        path = str(p if p.is_absolute() else base / p)
        if not os.path.exists(path):  # os.path's: False, not OSError or ValueError, for a name too long or with NUL
            c.err(lun, f"{lw}.path", f"{path} does not exist")
    bs = lun.get("block_size", 512)
    if not isinstance(bs, int) or isinstance(bs, bool) or bs not in (512, 4096):
        c.err(lun, f"{lw}.block_size", f"must be 512 or 4096, not {plain(bs)}")
    ro = lun.get("read_only", False)
    if not isinstance(ro, bool):
        c.err(lun, f"{lw}.read_only", f"must be true or false, not {plain(ro)}")
    lun_id = lun.get("lun")
    if lun_id is not None and (not isinstance(lun_id, int) or isinstance(lun_id, bool) or not 0 <= lun_id < 16384):
        c.err(lun, f"{lw}.lun", f"must be a LUN number 0..16383, not {plain(lun_id)}")
    return LunSpec(path, read_only=bool(ro), block_size=int(bs) if bs in (512, 4096) else 512, lun_id=lun_id)
