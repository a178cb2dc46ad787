"""The ``bootsvc`` command. Thin: parses arguments, builds services from
:mod:`target`, :mod:`isns` and :mod:`bootsvc`, runs them, reports errors in
one line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from target import (
    BackendError,
    ChapAuth,
    CheckReport,
    LunSpec,
    Portal,
    Target,
    TargetConfigError,
    TargetServer,
    TargetSpec,
)
from target.rbd import is_rbd, parse_spec

from . import SCSI_PRODUCT, SCSI_VENDOR, __version__, isns_cli
from . import config as config_mod
from .address import HostPort
from .bootfile_check import bootfile_warnings
from .cli_parser import CliParser, command
from .credentials import check_pair, parse_chap
from .debian import DEBIAN_BASE, DebianImageError, build_debian
from .demo import DEMO_BASE, DemoImageError, build_demo
from .dns.settings import notes as dns_notes
from .host import HostError, HostNetwork
from .image_import import import_image
from .ceph_images import CephImageStore
from .images import ImageError, ImageStore, image_store
from .iscsi_portals import describe as describe_portals
from .instance import PID_FILE
from .log_handler import LOG_FORMAT, LoopBatchedHandler, SecondFormatter
from .server_name import isns_identity
from .service import Services
from .storage_config import StorageBackend
from .yamlfile import Checker, ConfigError, load_yaml, parse_size


def default_iqn(image: Path) -> str:
    stem = "".join(c if c.isalnum() or c in ".-" else "-" for c in image.stem.lower()) or "disk"
    return f"iqn.2026-11.io.bootsvc:{stem}"


def export_name(image: str) -> Path:
    """What names an export by default: its file, or an rbd: LUN's image
    (target/rbd.py), not the options after it."""
    if is_rbd(image):
        try:
            return Path(parse_spec(image).image)
        except BackendError:
            pass  # Target.open says what is wrong with the name
    return Path(image)


def export_auth(args: argparse.Namespace) -> ChapAuth | None:
    """``--chap-file FILE`` (YAML: ``chap: {user, secret}``, optionally
    ``mutual_chap:``; a file, so the secret is not in ``ps`` or the shell's
    history) or an explicit ``--auth none``; neither is an error."""
    if args.chap_file is None:
        if args.auth != "none":
            raise ValueError("give --chap-file FILE (chap: {user: ..., secret: ...}, optional mutual_chap:) "
                             "or --auth none to serve without authentication")
        return None
    path = Path(args.chap_file)
    doc = load_yaml(path)
    c = Checker(path)
    c.unknown(doc, {"chap", "mutual_chap"}, "")
    chap, mutual = parse_chap(c, doc, "chap", "chap-file"), parse_chap(c, doc, "mutual_chap", "chap-file")
    check_pair(c, doc, "chap-file", chap, mutual)
    if chap is None:
        c.err(doc, "chap", "the file names no chap: {user: ..., secret: ...}")
    c.raise_if_any()
    assert chap is not None
    return ChapAuth(chap, mutual)


def cmd_export(args: argparse.Namespace) -> int:
    """Serve one or more images as LUNs of one target, now."""
    first = export_name(args.image[0])
    iqn = args.iqn or default_iqn(first)
    try:
        listen = HostPort.parse(args.listen, default_port=3260, what="portal")
        portal = Portal(listen.host, listen.port)
        spec = TargetSpec(iqn=iqn, alias=args.alias or first.name, vendor=SCSI_VENDOR, product=SCSI_PRODUCT,
                          luns=tuple(LunSpec(p, read_only=args.read_only, block_size=args.block_size)
                                     for p in args.image), auth=export_auth(args))
        target = Target.open(spec)
        try:
            target.claim()  # an image on shared storage: this server's alone, or a clear refusal
        except BaseException:
            target.close()
            raise
    except ConfigError as e:
        print("bootsvc export: " + "\n".join(e.problems), file=sys.stderr)
        return 2
    except (ValueError, TargetConfigError, BackendError, OSError) as e:
        print(f"bootsvc export: {e}", file=sys.stderr)
        return 2
    server = TargetServer([target], [portal], nop_interval=args.nop_interval)
    services = Services()
    services.add("iscsi", server.start, server.stop, where=f"{portal} ({iqn}, {len(args.image)} LUN)")
    return services.run()


def _load_config(path: str, command: str, host_checks: bool = False) -> config_mod.Config | None:
    """The config, or None after printing its problems; ``host_checks``:
    its listen interfaces and addresses must be this host's too."""
    try:
        host = HostNetwork.here() if host_checks else None
    except HostError as e:
        print(f"bootsvc {command}: {e}", file=sys.stderr)
        return None
    try:
        return config_mod.load(path, host)
    except config_mod.ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        print(f"bootsvc {command}: {len(e.problems)} problem(s) in {path}", file=sys.stderr)
        return None


def cmd_isns(args: argparse.Namespace) -> int:
    cfg = _load_config(args.config, "isns")
    return 1 if cfg is None else isns_cli.run(args, cfg)


def cmd_check(args: argparse.Namespace) -> int:
    """Validate a config file; print every problem as file:line: key: message."""
    cfg = _load_config(args.config, "check", host_checks=not args.elsewhere)
    if cfg is None:
        return 1
    _print_warnings(cfg)
    luns = sum(len(t.luns) for t in cfg.targets)
    _warn_missing_bases(cfg)
    for note in dns_notes(cfg.dns_forward, cfg.dns, cfg.dhcp.subnets if cfg.dhcp else ()):
        print(f"{cfg.path}: {note}", file=sys.stderr)
    if cfg.isns.target is not None and cfg.iscsi.portals:
        print(f"{cfg.path}: note: {isns_identity(cfg)}", file=sys.stderr)
    print(f"{cfg.path}: ok ({len(cfg.machines)} machine(s), {len(cfg.profiles)} profile(s), "
          f"{len(cfg.targets)} extra target(s) with {luns} LUN(s), "
          f"iSCSI on {describe_portals(cfg.iscsi.portals) or 'nothing'})")
    return 0


def _print_warnings(cfg: config_mod.Config) -> None:
    """What check and serve both say of a config that loads: its own
    warnings, and each firmware whose boot file the TFTP roots lack."""
    for warning in cfg.warnings:
        print(warning, file=sys.stderr)
    for warning in bootfile_warnings(cfg):
        print(f"{cfg.path}: warning: {warning}", file=sys.stderr)


def _warn_missing_bases(cfg: config_mod.Config) -> None:
    """One line per base image that is not there yet, however many machines use it."""
    store = ImageStore(cfg)
    users: dict[Path, list[str]] = {}
    for m in cfg.machines.values():
        users.setdefault(store.base_path(store.profile(m).base), []).append(m.profile)
    for base, profiles in users.items():
        if not base.is_file():
            names = ", ".join(sorted(set(profiles)))
            print(f"{cfg.path}: warning: base image {base} does not exist yet: {len(profiles)} machine(s) "
                  f"use it (profile {names}); make it with `bootsvc image import FILE {base.name}` (its OS must "
                  f"log in to its root disk from the iBFT: docs/images.md), build-debian or build-demo",
                  file=sys.stderr)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run every configured service in one process."""
    from .instance import AlreadyServing, InstanceLock

    cfg = _load_config(args.config, "serve", host_checks=True)
    if cfg is None:
        return 1
    _print_warnings(cfg)
    try:
        lock = InstanceLock(cfg.state_dir)  # before anything under state_dir is touched
    except (AlreadyServing, OSError) as e:
        print(f"bootsvc serve: {e}", file=sys.stderr)
        return 1
    try:
        return _serve(cfg)
    finally:
        lock.release()


def _serve(cfg: config_mod.Config) -> int:
    from .server import ServeError, Server

    try:
        server = Server(cfg, report=lambda line: print(f"bootsvc serve: {line}", file=sys.stderr, flush=True))
    except ServeError as e:
        print(f"bootsvc serve: {e}", file=sys.stderr)
        return 1
    if not server.services.items:
        server.close()
        print("bootsvc serve: nothing to serve: set listen.iscsi and machines or targets, or listen.dhcp, "
              "listen.tftp, listen.http or listen.dns", file=sys.stderr)
        return 1
    return server.run()


def cmd_machines(args: argparse.Namespace) -> int:
    """Every machine: its address, lease, latest boot and diagnosis."""
    from . import machines_cli

    cfg = _load_config(args.config, "machines")
    return 1 if cfg is None else machines_cli.machines(cfg, args.json)


def cmd_timeline(args: argparse.Namespace) -> int:
    """A machine's latest boots, step by step, with the diagnosis."""
    from . import machines_cli

    cfg = _load_config(args.config, "timeline")
    return 1 if cfg is None else machines_cli.timeline(cfg, args.machine, args.count, args.json)


def cmd_reload(args: argparse.Namespace) -> int:
    """Ask the running `bootsvc serve` of this config to re-read it (SIGHUP)."""
    cfg = _load_config(args.config, "reload")
    if cfg is None:
        return 1  # the running server would refuse it too; say so before signalling
    pidfile = cfg.state_dir / PID_FILE
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as e:
        print(f"bootsvc reload: no running bootsvc serve for {cfg.path} ({pidfile}: "
              f"{getattr(e, 'strerror', None) or e})", file=sys.stderr)
        return 1
    print(f"bootsvc reload: asked process {pid} to re-read {cfg.path}")
    return 0


def human(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


def _image_list(store: ImageStore, args: argparse.Namespace) -> int:
    print(f"bases in {store.images_dir}:")
    for b in store.bases():
        users = ", ".join(b.dependents) or "nothing"
        print(f"  {b.name:24} {b.format:5} {human(b.virtual_size):>10}  on disk {human(b.file_bytes):>10}"
              f"  used by {users}")
    print(f"overlays in {store.overlays_dir}:")
    for o in store.overlays():
        limit = f" of {human(o.limit)}" if o.limit else ""
        state = "  in use" if o.in_use else ""
        print(f"  {o.host:24} {o.policy:10} {human(o.allocated):>10}{limit} allocated, "
              f"disk {human(o.virtual_size)}, base {Path(o.base).name}{state}")
    return 0


def _ceph_list(store: ImageStore, args: argparse.Namespace) -> int:
    """``image list`` on a pool: bases with their clones, every disk with
    what it holds itself."""
    assert isinstance(store, CephImageStore)
    pool = store.pool
    print(f"bases in pool {pool.pool}:")
    for b in pool.bases():
        print(f"  {b.name:24} {human(b.size):>10}  cloned by {', '.join(b.clones) or 'nothing'}")
    print(f"disks in pool {pool.pool}:")
    for d in pool.disks():
        print(f"  {d.name:24} {human(d.allocated):>10} allocated, disk {human(d.size)}, base {d.base or '-'}")
    return 0


def _image_create(store: ImageStore, args: argparse.Namespace) -> int:
    for host in args.host:
        print(store.create(host, replace=args.force))
    return 0


def _image_reset(store: ImageStore, args: argparse.Namespace) -> int:
    print(store.reset(store.machine(args.host)))
    return 0


def _image_commit(store: ImageStore, args: argparse.Namespace) -> int:
    print(store.commit(args.host, args.new_base, replace=args.force))
    return 0


def _image_rebase(store: ImageStore, args: argparse.Namespace) -> int:
    store.rebase(args.host, args.base)
    print(f"{args.host} now on {args.base}")
    return 0


def _image_build_demo(store: ImageStore, args: argparse.Namespace) -> int:
    try:
        base = build_demo(store.cfg, args.name, force=args.force, kernel_deb=args.kernel_deb)
    except DemoImageError as e:
        print(f"bootsvc image build-demo: {e}", file=sys.stderr)
        return 1
    _published(store, base, args.force)
    return 0


def _published(store: ImageStore, base: Path, replace: bool) -> None:
    """A base made in state_dir/images, put where machines find it (a Ceph pool: copied there)."""
    where = store.publish_base(base, replace)
    if where != str(base):
        print(f"{base} is base {where}")


def _image_build_debian(store: ImageStore, args: argparse.Namespace) -> int:
    packages = tuple(p for group in args.packages for p in group.replace(",", " ").split())
    try:
        base = build_debian(store.cfg, args.name, packages=packages, size=args.size, force=args.force,
                            uri=args.mirror, root_password_file=args.root_password_file, ssh_key=args.ssh_key)
    except DebianImageError as e:
        print(f"bootsvc image build-debian: {e}", file=sys.stderr)
        return 1
    _published(store, base, args.force)
    return 0


def _image_import(store: ImageStore, args: argparse.Namespace) -> int:
    base = import_image(ImageStore(store.cfg), args.file, args.name, force=args.force,
                        show_progress=sys.stdout.isatty())
    print(base)
    _published(store, base, args.force)
    return 0


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).replace(repr(text), text)) from None


def _check_state(r: CheckReport) -> str:
    """One image's check outcome in a few words."""
    if not r.corruptions and not r.leaks:
        return "clean"
    repaired = f", {r.leaks_fixed} repaired" if r.leaks_fixed else ""
    return f"{len(r.corruptions)} error(s), {r.leaks} {r.leak_kind}{repaired}"


def _image_check(store: ImageStore, args: argparse.Namespace) -> int:
    """2 when an image has errors or leaks left (as qemu-img check)."""
    bad = 0
    for r in store.check(args.host, repair=args.repair):
        print(f"{r.image}: {_check_state(r)}; {human(r.clusters_used * r.cluster_size)} in use")
        for c in r.corruptions + r.notes:
            print(f"  {c}")
        bad += bool(r.corruptions) or r.leaks > r.leaks_fixed
    return 2 if bad else 0


IMAGE_COMMANDS: dict[str, Callable[[ImageStore, argparse.Namespace], int]] = {
    "list": _image_list,
    "create": _image_create,
    "reset": _image_reset,
    "commit": _image_commit,
    "rebase": _image_rebase,
    "build-demo": _image_build_demo,
    "build-debian": _image_build_debian,
    "import": _image_import,
    "check": _image_check,
}
# on a Ceph pool (bootsvc/ceph_images.py) the same commands; bases are built
# or imported into state_dir/images as with files, then copied into the pool
CEPH_IMAGE_COMMANDS: dict[str, Callable[[ImageStore, argparse.Namespace], int]] = IMAGE_COMMANDS | {
    "list": _ceph_list}


def cmd_image(args: argparse.Namespace) -> int:
    """Bases and per-machine overlays under state_dir."""
    cfg = _load_config(args.config, "image")
    if cfg is None:
        return 1
    ceph = cfg.storage.backend is StorageBackend.CEPH
    store = image_store(cfg)
    try:
        return (CEPH_IMAGE_COMMANDS if ceph else IMAGE_COMMANDS)[args.image_command](store, args)
    except ImageError as e:
        print(f"bootsvc image {args.image_command}: {e}", file=sys.stderr)
        return 1


def cmd_vm(args: argparse.Namespace) -> int:
    """Diskless QEMU machines booting through bootsvc, each boot's timeline."""
    from .vm import network, qemu, run  # QEMU's world: only this command needs it
    cfg = _load_config(args.config, "vm")
    if cfg is None:
        return 1
    opts = run.Options(count=args.count, macs=tuple(args.mac), accel=args.accel, timeout=args.timeout,
                       firmware=qemu.Firmware.UEFI if args.uefi else qemu.Firmware.BIOS, attach=args.attach,
                       nic_rom=not args.firmware_pxe, uefi_macs=tuple(args.uefi_mac), end_on=frozenset(args.end_on))
    try:
        timelines = run.run(cfg, opts)
    except (run.VmError, network.NetworkError, qemu.QemuError) as e:
        print(f"bootsvc vm: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bootsvc vm: interrupted; VMs stopped and the boot network removed", file=sys.stderr)
        return 130
    return 0 if timelines and all(t.booted for t in timelines) else 1


# The loggers events are written on: bootsvc's LogWriter (bootsvc.<service>),
# and target/ and isns/ when they run without a bus (``bootsvc export``).
EVENT_LOGGERS = ("bootsvc", "target", "isns")


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """One line per event by default (INFO on the event loggers), so the
    journal of ``bootsvc serve`` shows every DHCP offer, TFTP transfer and
    iSCSI login; other libraries stay at WARNING. Events a client can cause
    at will are DEBUG (events.NOISE): only ``-v`` shows them."""
    logging.basicConfig(level=logging.DEBUG if verbose >= 2 else logging.WARNING, stream=sys.stderr,
                        format=LOG_FORMAT)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler.formatter, logging.Formatter) and handler.formatter._fmt == LOG_FORMAT:
            if type(handler) is logging.StreamHandler:
                # basicConfig's: lines of one loop iteration in one write (bootsvc/log_handler.py)
                root.removeHandler(handler)
                handler = LoopBatchedHandler(handler.stream)
                root.addHandler(handler)
            handler.setFormatter(SecondFormatter(LOG_FORMAT))
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    for name in EVENT_LOGGERS:
        logging.getLogger(name).setLevel(level)
    # what no format of ours shows is not gathered for every line (the logging
    # module's documented switches): a DHCP exchange logs two or three lines
    logging._srcfile = None  # type: ignore[attr-defined]  # the caller's file, line and function
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    if os.environ.get("BOOTSVC_DEBUG"):
        logging.getLogger().setLevel(logging.DEBUG)
        for name in EVENT_LOGGERS:
            logging.getLogger(name).setLevel(logging.DEBUG)


def version() -> str:
    """The installed distribution's version; running from a checkout that
    was never installed, the package's own (pyproject.toml reads it from
    there, so both agree once installed)."""
    try:
        return metadata.version("bootsvc")
    except metadata.PackageNotFoundError:
        return __version__


def build_parser() -> CliParser:
    p = CliParser(prog="bootsvc", description="Network boot for diskless machines. The options -c, -v and -q "
                  "go anywhere: before the command, after it or after its verb.")
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = p.add_subparsers(dest="command", required=True)

    e = command(sub, "export", "serve disk images over iSCSI right now", config=False)
    e.add_argument("image", nargs="+", help="raw image file(s) or block device(s); each becomes a LUN")
    e.add_argument("--iqn", help="target name (default: iqn.2026-11.io.bootsvc:<image name>)")
    e.add_argument("--alias", help="TargetAlias shown to initiators")
    e.add_argument("--listen", default="0.0.0.0:3260", help="HOST:PORT to listen on (default 0.0.0.0:3260)")
    e.add_argument("--read-only", action="store_true", help="refuse writes (DATA PROTECT)")
    e.add_argument("--block-size", type=int, default=512, choices=(512, 4096), help="logical block size")
    e.add_argument("--chap-file", metavar="FILE",
                   help="YAML with chap: {user, secret} (and mutual_chap:) the initiator must prove")
    e.add_argument("--auth", choices=("none",), help="none: serve without authentication (explicit opt-out)")
    e.add_argument("--nop-interval", type=float, default=15.0,
                   help="seconds of silence before pinging the initiator (0: never)")
    e.set_defaults(func=cmd_export)

    def with_config(name: str, help: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        cp = command(sub, name, help)
        cp.set_defaults(func=func)
        return cp

    with_config("serve", "run the configured services", cmd_serve)
    mc = with_config("machines", "every machine: address, lease, last boot and its diagnosis", cmd_machines)
    mc.add_argument("--json", action="store_true", help="as JSON")
    tl = with_config("timeline", "a machine's latest boots, step by step, with the diagnosis", cmd_timeline)
    tl.add_argument("machine", help="host name or MAC")
    tl.add_argument("-n", "--count", type=int, default=1, help="how many of its latest boots (default 1)")
    tl.add_argument("--json", action="store_true", help="as JSON")
    with_config("reload", "make the running serve re-read its config (like SIGHUP)", cmd_reload)
    im = with_config("image", "base images and per-machine overlays", cmd_image)
    isub = im.add_subparsers(dest="image_command", required=True)
    isub.add_parser("list", help="bases, the overlays on them, and their allocated sizes")
    ic = isub.add_parser("create", help="create machines' overlays on their profile's base")
    ic.add_argument("host", nargs="+", help="hostname or MAC")
    ic.add_argument("--force", action="store_true", help="replace an existing overlay (its changes are lost)")
    ir = isub.add_parser("reset", help="throw a machine's changes away (a fresh overlay)")
    ir.add_argument("host")
    icm = isub.add_parser("commit", help="make a new base image from what a machine sees now")
    icm.add_argument("host")
    icm.add_argument("new_base", help="file name in state_dir/images (.qcow2: qcow2, else raw); "
                     "on Ceph the base image of that name without its extension")
    icm.add_argument("--force", action="store_true", help="replace a base of that name no image depends on")
    irb = isub.add_parser("rebase", help="move a machine's overlay to another base, keeping its contents")
    irb.add_argument("host")
    irb.add_argument("base", help="file name in state_dir/images")
    ibd = isub.add_parser("build-demo", help="build the demo base image: a small Linux that boots from iSCSI")
    ibd.add_argument("--name", default=DEMO_BASE, help=f"base image file name (default {DEMO_BASE})")
    ibd.add_argument("--force", action="store_true", help="build it again even if it exists")
    ibd.add_argument("--kernel-deb", type=Path, help="a Debian cloud kernel .deb to use instead of downloading one")
    ideb = isub.add_parser("build-debian", help="build a Debian 12 base image that boots diskless with systemd")
    ideb.add_argument("name", nargs="?", default=DEBIAN_BASE, help=f"base image file name (default {DEBIAN_BASE})")
    ideb.add_argument("--packages", action="append", default=[], metavar="PKG,...",
                      help="more Debian packages to install (comma or space separated, repeatable)")
    ideb.add_argument("--size", type=_size_arg, default="4G", help="disk size (default 4G)")
    ideb.add_argument("--force", action="store_true", help="build it again even if it exists")
    ideb.add_argument("--mirror", help="Debian mirror URI (default: the host's apt sources for bookworm)")
    ideb.add_argument("--root-password-file", type=Path, metavar="FILE",
                      help="root's password on the first line (serial console login; default: root is locked)")
    ideb.add_argument("--ssh-key", type=Path, metavar="FILE", help="SSH public key(s) root may log in with")
    iim = isub.add_parser("import", help="make a base image from a raw, qcow2, vmdk or vdi disk (docs/images.md)")
    iim.add_argument("file", type=Path, help="the disk image; a backing chain is merged into the base")
    iim.add_argument("name", nargs="?", help="file name in state_dir/images (.qcow2: qcow2, else raw; "
                     "default: the file's name as .qcow2)")
    iim.add_argument("--force", action="store_true", help="replace a base of that name no image depends on")
    ick = isub.add_parser("check", help="check overlays like qemu-img check")
    ick.add_argument("host", nargs="*", help="default: every overlay")
    ick.add_argument("--repair", action="store_true",
                     help="fix leaked clusters (Ceph: remove stale renewals, break locks of clients gone)")

    vm = with_config("vm", "boot inventory machines as diskless QEMU VMs and show each boot's timeline", cmd_vm)
    vm.add_argument("--count", type=int, default=1, help="boot the first N machines by hostname (default 1)")
    vm.add_argument("--mac", action="append", default=[], help="boot this machine (repeatable)")
    vm.add_argument("--uefi", action="store_true", help="UEFI firmware (OVMF) instead of BIOS")
    vm.add_argument("--uefi-mac", action="append", default=[],
                    help="boot this machine on UEFI, the others per --uefi (repeatable; mixes firmware in one run)")
    vm.add_argument("--firmware-pxe", action="store_true",
                    help="no iPXE ROM on the UEFI machines' NICs (--uefi, --uefi-mac); UEFI's own PXE loads iPXE "
                         "from TFTP, like a real machine's")
    vm.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto",
                    help="auto: KVM only where it is real (not paravirtual), else TCG")
    vm.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for every machine (default 300)")
    vm.add_argument("--attach", action="store_true",
                    help="use the running bootsvc's bridge (listen.dhcp interface) instead of a private network")
    vm.add_argument("--end-on", action="append", default=[], metavar="RULE",
                    help="end a machine's boot as failed once bootsvc's flight recorder diagnoses it with this rule "
                         "(e.g. login_refused; repeatable): a fault you expect, no need to wait out --timeout")
    isns_cli.add_arguments(with_config("isns", "what the iSNS server holds; discovery domains by hand", cmd_isns))
    ck = with_config("check", "validate a config file", cmd_check)
    ck.add_argument("--elsewhere", action="store_true",
                    help="the config is for another machine: skip checking that its listen interfaces and "
                         "addresses exist on this host (serve always checks them)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    opts = parser.options(args)
    args.config = opts.config
    setup_logging(opts.verbose, opts.quiet)
    return int(args.func(args))
