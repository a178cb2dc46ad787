"""The fleet: the one owner of every machine bootsvc serves (DESIGN.md
"The machine fleet and events").

Per machine it holds the inventory entry (or the machine made for an
unknown MAC), its profile, its disk (the overlay and the target serving
it) and, through the lease store, its leases; and it holds the one table
of targets the iSCSI server reads. Services ask it (``machine``,
``servable``, ``addresses``, ``isns_wanted``) and never change it; the
wiring hands it a new config on reload (``apply``), which it diffs and
applies. Slow work (making, renewing or opening overlays) runs off the
event loop in a thread; only the swap into the tables happens on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Awaitable, Callable, Container, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from target import Backend, BackendError, ChapAuth, Standby, Target, TargetConfigError, TargetSpec, open_backend
from target.backend import DiskElsewhere

from .config import Config
from .credentials import AuthMode, chap_auth, credential_store
from .dhcp.leases import LeaseState, LeaseStore
from .dhcp.responder import UnknownPolicy
from .events import Bus, Event, Kind
from .fleet_copy import FleetCopy
from .fleet_diff import ConfigDiff, diff_configs
from .images import ImageError, image_store
from .inventory import Machine, generated_machine
from .isns_registration import Wanted, wanted
from .profiles import OverlayPolicy, Profile
from .storage_config import StorageBackend

IPv4 = ipaddress.IPv4Address


# seconds a replaced disk stays open: the sessions dropped for the new boot
# may still have reads or writes on it in worker threads
CLOSE_GRACE = 5.0
# seconds a stopping fleet waits for a renewed disk to be given its name
# (two renames: on a Ceph pool, two round trips to the cluster)
RENAME_TIMEOUT = 30.0
# the renames: submitted from the event loop, run here, waited for at close
# (a task would be cancelled by a shutdown before it ran, leaving a served
# renewal without its name)
_RENAMES = ThreadPoolExecutor(max_workers=4, thread_name_prefix="disk-rename")


class FleetError(Exception):
    """The fleet cannot start as configured (a config target cannot be opened)."""


@dataclass
class Disk:
    """A machine's boot disk as served: its overlay's target."""

    machine: Machine
    profile: Profile
    spec: TargetSpec
    target: Target
    fresh: bool = True  # nobody has logged in since it was made: the coming boot needs no renewal
    renewing: bool = False  # a new overlay is being made for it
    # shared storage: its claim taken or released one at a time (Fleet.claim, Fleet._release)
    claim_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    idle: asyncio.TimerHandle | None = None  # its release, once its last session ended


class Fleet:
    """Every machine and its disk, and the one table of
    targets (``targets``, by IQN: the iSCSI server holds this very dict)."""

    def __init__(self, cfg: Config, bus: Bus, leases: LeaseStore | None = None) -> None:
        self.cfg = cfg
        self.bus = bus
        self.leases = leases
        self.targets: dict[str, Target] = {}
        self._unbooted: dict[str, float] = {}  # adopted machines not logged in yet: MAC -> when adopted
        self._machines = self._inventory(cfg)
        self.machines: Mapping[str, Machine] = MappingProxyType(self._machines)
        self._disks: dict[str, Disk] = {}  # by MAC
        self._replaced: set[Backend] = set()  # renewed disks' old overlays, closed after CLOSE_GRACE
        # a renewal being given its disk's name: its machine and the renames, by MAC
        self._naming: dict[str, tuple[Machine, Future[None]]] = {}
        self._specs: dict[str, TargetSpec] = {}  # the config's own targets served, by IQN
        # proxy mode: the address another DHCP server gave a machine, and back
        self._proxied: dict[IPv4, str] = {}
        self._proxied_of: dict[str, IPv4] = {}
        # the address each machine's last login came from (reserved_ips)
        self._logged_in: dict[IPv4, str] = {}
        self._adopting: dict[str, asyncio.Future[Machine | None]] = {}
        self._tasks: set[asyncio.Task[object]] = set()
        self._capped = False  # unknown MACs are refused: dhcp.max_adopted machines were made
        # made again when the machines change: initiator IQN -> MAC, fixed IP -> MAC, fixed IPs
        self._by_initiator: dict[str, str] | None = None
        self._by_target: dict[str, str] | None = None  # a disk's target IQN -> its machine's MAC
        self._fixed: dict[IPv4, str] | None = None
        self._reserved: frozenset[IPv4] | None = None
        self.store = image_store(cfg, self.machines, bus)
        self.credentials = credential_store(cfg)
        bus.subscribe(self.on_event)

    # -- start and stop --------------------------------------------------------------

    def open(self) -> None:
        """Every machine's disk and every config target, before serving. A
        machine whose disk cannot be made is reported (``disk.failed``) and
        left out; a config target that cannot be opened is a FleetError."""
        for disk in self._open_disks(list(self._machines.values())):
            self._install(disk)
        for spec in self.cfg.targets:
            try:
                self.targets[spec.iqn] = _open_claimed(self._with_reservations(spec))
            except (TargetConfigError, BackendError, OSError) as e:
                self.close()
                raise FleetError(str(e)) from e
            self._specs[spec.iqn] = spec

    def close(self) -> None:
        for mac in list(self._naming):
            self._settle_name(mac)
        for backend in self._replaced:
            backend.close()
        self._replaced.clear()
        for disk in self._disks.values():
            self._not_idle(disk)
            self._forget_standby(disk)
        for t in self.targets.values():
            t.close()
        self.targets.clear()
        self._disks.clear()
        self._specs.clear()
        self._forget_indexes()
        self.credentials.close()
        self.store.close()

    # -- what services ask -------------------------------------------------------------

    def machine(self, mac: str) -> Machine | None:
        return self._machines.get(mac)

    def profile(self, machine: Machine) -> Profile:
        return self.cfg.profiles[machine.profile]

    def disk(self, mac: str) -> Disk | None:
        return self._disks.get(mac)

    def servable(self, machine: Machine) -> bool:
        """Whether the machine's disk is served and it may log in to it."""
        disk = self._disks.get(machine.mac)
        return disk is not None and 0 in disk.target.luns and disk.target.allows(machine.initiator_iqn)

    def auth(self, machine: Machine) -> ChapAuth | None:
        """The CHAP its disk asks of the machine (and its script hands it)."""
        disk = self._disks.get(machine.mac)
        return disk.spec.auth if disk is not None else None

    def _auth_for(self, m: Machine) -> ChapAuth | None:
        """The credentials of a machine's disk: its own from the config,
        else its profile's, else the ones bootsvc made for it (kept in
        state_dir, or on Ceph in the pool; bootsvc/credentials.py)."""
        profile = self.profile(m)
        if profile.auth is AuthMode.NONE:
            return None
        forward, reverse = m.chap or profile.chap, m.mutual_chap or profile.mutual_chap
        if forward is None or (profile.auth is AuthMode.MUTUAL and reverse is None):
            made_forward, made_reverse = self.credentials.secrets_of(m)
            forward, reverse = forward or made_forward, reverse or made_reverse
        return chap_auth(profile.auth, forward, reverse)

    def reserved_ips(self) -> Container[IPv4]:
        """What no new DHCP client may have: the machines' fixed IPs, and
        the address of every machine logged in to its disk. A diskless OS
        keeps the address its boot firmware leased (the iBFT NIC is static:
        docs/debian-image.md) and may never renew it, so its lease can run
        out while the machine runs; handing that address to another client
        would cut the machine off its root disk."""
        self._fixed_ips()
        assert self._reserved is not None
        return _AnyOf(self._reserved, self._session_holds)

    def logged_in(self) -> frozenset[IPv4]:
        """The addresses a live session to a machine's disk comes from."""
        return frozenset(ip for ip in list(self._logged_in) if self._session_holds(ip))

    def copy(self) -> FleetCopy:
        """What DHCP asks of the fleet, as data, for serve's DHCP worker
        (bootsvc/fleet_copy.py). Secrets stay here: the copy's machines and
        profiles have none, and it says only which disks ask CHAP."""
        cfg = self.cfg
        cfg = replace(cfg, machines={}, targets=(), profiles={
            name: replace(p, chap=None, mutual_chap=None) for name, p in cfg.profiles.items()})
        machines = {mac: replace(m, chap=None, mutual_chap=None, lines={}) for mac, m in self._machines.items()}
        return FleetCopy(cfg, machines, frozenset(m.mac for m in self._machines.values() if self.servable(m)),
                         frozenset(m.mac for m in self._machines.values() if self.auth(m) is not None),
                         frozenset(self._fixed_ips()), self.logged_in())

    def _session_holds(self, ip: IPv4) -> bool:
        """Whether a live session to a machine's disk comes from ``ip``. The
        login event recorded the address; the disk's target says whether a
        session from it is still there (so no end event needs following)."""
        got = self._logged_in.get(ip)
        if got is None:
            return False
        disk = self._disks.get(got)
        host = str(ip)
        if disk is not None and any(s.link.peer.rsplit(":", 1)[0] == host for s in disk.target.sessions):
            return True
        del self._logged_in[ip]
        return False

    def _fixed_ips(self) -> dict[IPv4, str]:
        if self._fixed is None:
            self._fixed = {m.ip: m.mac for m in self._machines.values() if m.ip is not None}
            self._reserved = frozenset(self._fixed)
        return self._fixed

    def mac_at(self, address: str) -> str | None:
        """The MAC of the machine at a client address: its fixed IP, its
        unexpired lease, or in proxy mode the address it asked from. Who may
        have a machine's script, and whose a transfer was in the events."""
        try:
            ip = IPv4(address)
        except ValueError:
            return None
        mac = self._fixed_ips().get(ip)
        if mac is None and self.leases is not None:
            lease = self.leases.holder(ip, time.time())
            mac = lease.mac if lease is not None and lease.state is not LeaseState.DECLINED else None
        return mac or self._proxied.get(ip) or (self._logged_in.get(ip) if self._session_holds(ip) else None)

    def addresses(self) -> dict[str, IPv4]:
        """Every machine's address for DNS: its fixed IP, else its lease."""
        out: dict[str, IPv4] = {}
        for m in self._machines.values():
            lease = self.leases.for_mac(m.mac) if self.leases is not None and m.ip is None else None
            ip = m.ip or (lease.ip if lease is not None else None)
            if ip is not None:
                out[m.hostname] = ip
        return out

    def isns_wanted(self) -> Wanted:
        """What bootsvc should have registered in iSNS: its targets and a
        DD per machine whose disk is served; on shared storage only the
        disks this server holds are registered at its portals."""
        return wanted(self.cfg, self._machines.values(),
                      {name: t.alias for name, t in self.targets.items() if t.claimed}, self.targets)

    # -- events ------------------------------------------------------------------------

    def mac_of(self, event: Event) -> str | None:
        """The machine an event is about: its MAC, else the machine whose
        initiator or target it names, else the machine at its address."""
        if event.mac is not None:
            return event.mac
        if event.initiator is not None and (mac := self._initiators().get(event.initiator)) is not None:
            return mac
        if event.target is not None and (mac := self._targets_of().get(event.target)) is not None:
            return mac
        source = event.fields.get("source")  # iSNS: the node a request came from
        if isinstance(source, str) and (mac := self._initiators().get(source)) is not None:
            return mac
        address = event.ip or (event.peer.rsplit(":", 1)[0] if event.peer and event.peer.count(":") == 1
                               else event.peer)
        return self.mac_at(address) if address else None

    def machine_of_target(self, iqn: str) -> Machine | None:
        """The machine whose disk is the target ``iqn`` (None: a config target)."""
        mac = self._targets_of().get(iqn)
        return self._machines.get(mac) if mac is not None else None

    def _targets_of(self) -> dict[str, str]:
        if self._by_target is None:
            self._by_target = {d.target.name: mac for mac, d in self._disks.items()}
        return self._by_target

    def _forget_indexes(self) -> None:
        """The machines or their disks changed: the lookups made from them
        are made again when next asked (not on every event: a stranger's
        login flood asks for each of its events)."""
        self._fixed = self._reserved = self._by_initiator = self._by_target = None

    def on_event(self, event: Event) -> None:
        """The fleet's own subscription: a boot ROM's offer starts a new
        boot (an ephemeral disk is made anew); an adopted machine's first
        login keeps it. The boots themselves are the recorder's."""
        mac = event.mac or (self._initiators().get(event.initiator) if event.initiator else None)
        if self._unbooted:
            self._adoption_progress(event, mac)
        if mac is None or mac not in self._machines:
            return  # an unknown MAC seen is recorded by the DHCP responder that saw it
        if event.fields.get("proxy") and event.ip is not None:
            self._proxy_address(mac, IPv4(event.ip))
        disk = self._disks.get(mac)
        if disk is None:
            return
        if event.kind is Kind.ISCSI_LOGIN:
            disk.fresh = False  # this boot uses it: the next one gets a new one
            self._note_login(mac, event.peer)
            self._not_idle(disk)
        elif event.kind in (Kind.ISCSI_LOGOUT, Kind.ISCSI_SESSION_DROPPED):
            self._idle_later(mac, disk)
        elif event.kind is Kind.DHCP_OFFER and event.fields.get("firmware"):
            # a boot firmware asking (PXE ROM, UEFI, iPXE; never an OS's own
            # DHCP client) starts a new boot, in proxy mode as in authoritative
            self._spawn(self._boot_starts(mac))

    def _note_login(self, mac: str, peer: str | None) -> None:
        """Remember the IPv4 address a machine logged in from (reserved_ips)."""
        if peer and peer.count(":") == 1:
            with contextlib.suppress(ValueError):
                self._logged_in[IPv4(peer.rsplit(":", 1)[0])] = mac

    def _proxy_address(self, mac: str, ip: IPv4) -> None:
        """One address per machine: a machine given a new one loses the old."""
        old = self._proxied_of.get(mac)
        if old is not None and self._proxied.get(old) == mac:
            del self._proxied[old]
        self._proxied[ip], self._proxied_of[mac] = mac, ip

    def _initiators(self) -> dict[str, str]:
        if self._by_initiator is None:
            self._by_initiator = {m.initiator_iqn: m.mac for m in self._machines.values()}
        return self._by_initiator

    def _spawn(self, work: Awaitable[object]) -> None:
        try:
            task: asyncio.Task[object] = asyncio.get_running_loop().create_task(work)  # type: ignore[arg-type]
        except RuntimeError:  # no loop (a unit test feeding events by hand): nothing to run it on
            work.close()  # type: ignore[attr-defined]
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- machines' disks -----------------------------------------------------------------

    async def _boot_starts(self, mac: str) -> None:
        """A new boot: the disk is claimed first (shared storage), then an
        ephemeral one renewed; a disk another server holds is not touched."""
        if await self.claim(mac):
            await self.renew(mac)

    async def claim(self, mac: str) -> bool:
        """Claim a machine's disk on shared storage for this server (RBD's
        lock, taken off the loop), when the machine turns to this server:
        its boot firmware's DHCP here (a login claims it too:
        IscsiConnection._claim_for). Not at start: a second server beside
        the first must not take every disk.
        A disk held by another server is not served here: ``disk.elsewhere``
        says by whom. True when it is this server's now."""
        disk = self._disks.get(mac)
        if disk is None:
            return False
        async with disk.claim_lock:
            claimed = await self._claim(disk)
        if claimed and not disk.target.sessions:
            self._idle_later(mac, disk)  # a boot that never logs in here does not keep it
        return claimed

    async def _claim(self, disk: Disk) -> bool:
        """Claim (holding the disk's claim_lock); the events say what came of it."""
        if disk.target.claimed:
            return True
        m = disk.machine
        try:
            await asyncio.to_thread(disk.target.claim)
        except DiskElsewhere as e:
            self.bus.emit(Kind.DISK_ELSEWHERE, mac=m.mac, hostname=m.hostname, target=m.target_iqn, why=str(e))
            return False
        except (BackendError, OSError) as e:
            self.bus.emit(Kind.DISK_FAILED, mac=m.mac, hostname=m.hostname, target=m.target_iqn,
                          why=f"not claimed: {e}")
            return False
        self.bus.emit(Kind.DISK_CLAIMED, mac=m.mac, hostname=m.hostname, target=m.target_iqn)
        return True

    # -- releasing a disk the machine stopped using (shared storage) -------------------

    def _idle_later(self, mac: str, disk: Disk) -> None:
        """The machine's last session may have ended: its disk is released
        ``storage.release_after`` seconds from now if no session is there
        then (a reconnect, a reinstatement or a reboot in between keeps it)."""
        if self.cfg.storage.backend is not StorageBackend.CEPH:
            return  # a file is this server's alone: nothing to release
        self._not_idle(disk)
        with contextlib.suppress(RuntimeError):  # no loop (a unit test feeding events): nothing to time
            disk.idle = asyncio.get_running_loop().call_later(
                max(1.0, self.cfg.storage.release_after), lambda: self._spawn(self._release(mac, disk)))

    @staticmethod
    def _not_idle(disk: Disk) -> None:
        if disk.idle is not None:
            disk.idle.cancel()
            disk.idle = None

    def _unused(self, mac: str, disk: Disk) -> bool:
        return self._disks.get(mac) is disk and not disk.target.sessions and disk.target.claimed \
            and not disk.renewing

    async def _release(self, mac: str, disk: Disk) -> None:
        """Give up a disk no session uses (its lock, off the loop), so that
        the machine's next boot may be served by another server; its
        renewal waiting for that boot goes too (made again here if the boot
        comes here). A login that came in while the release ran (its claim
        found the disk still claimed) claims it again at once."""
        disk.idle = None
        async with disk.claim_lock:
            if not self._unused(mac, disk):
                return
            m = disk.machine
            standby, disk.target.standby = disk.target.standby, None

            def give_up() -> None:  # in a thread: round trips to the cluster
                if standby is not None:
                    standby.close()
                    self.store.drop_renewal(m)
                disk.target.release()
            try:
                await asyncio.to_thread(give_up)
            except (BackendError, ImageError, OSError) as e:
                self.bus.emit(Kind.DISK_FAILED, mac=m.mac, hostname=m.hostname, target=m.target_iqn,
                              why=f"not released: {e}")
                return
            if disk.target.sessions:
                await self._claim(disk)
                return
        self.bus.emit(Kind.DISK_RELEASED, mac=m.mac, hostname=m.hostname, target=m.target_iqn,
                      why=f"no session for {self.cfg.storage.release_after} s")

    async def renew(self, mac: str) -> bool:
        """A machine starts a new boot: its ephemeral overlay is made anew.
        If the last boot's sessions are still open (a reset machine does not
        log out), the new overlay waits beside the served one and replaces
        it when the new boot logs in (target.Standby): never under a session
        that is still writing, and never for a forged DHCP packet alone, as
        the login proves the machine. True when made."""
        disk = self._disks.get(mac)
        if disk is None or disk.profile.overlay is not OverlayPolicy.EPHEMERAL:
            return False
        if disk.fresh or disk.renewing or disk.target.standby is not None:
            return False  # unused since made, or its renewal is under way
        m = disk.machine
        disk.renewing = True
        try:
            await self._named_first(mac)
            backend = await asyncio.to_thread(self._fresh_backend, disk)
        except (ImageError, BackendError, TargetConfigError, OSError) as e:
            self.bus.emit(Kind.DISK_FAILED, mac=m.mac, hostname=m.hostname, why=f"not renewed: {e}")
            return False
        finally:
            disk.renewing = False
        if self._disks.get(mac) is not disk:  # forgotten (reload, expiry) meanwhile
            backend.close()
            self.store.drop_renewal(m)
            return False
        disk.target.standby = Standby({0: backend}, lambda old: self._renewed(disk, old))
        if disk.target.sessions:
            self.bus.emit(Kind.DISK_KEPT, mac=m.mac, hostname=m.hostname,
                          why="the last boot's sessions are still open: renewed at this boot's login")
        else:
            disk.target.swap_standby()
        return True

    def _renewed(self, disk: Disk, old: list[Backend]) -> None:
        """The new overlay is served: it takes the served one's name, and
        the old one is closed once the dropped sessions' reads and writes
        in worker threads are done with it. The renames (round trips to a
        Ceph cluster) run in a worker thread, submitted now: the next
        renewal and ``close`` wait for them."""
        m = disk.machine
        future = _RENAMES.submit(self.store.keep_renewal, m)
        self._naming[m.mac] = m, future
        with contextlib.suppress(RuntimeError):  # no loop (a unit test): close reports a failure
            loop = asyncio.get_running_loop()
            future.add_done_callback(lambda f: _on_loop(loop, self._named, m, f))
        disk.fresh = True
        for backend in old:
            self._close_later(backend)
        self.bus.emit(Kind.DISK_RENEWED, mac=m.mac, hostname=m.hostname, target=m.target_iqn)

    def _named(self, m: Machine, future: Future[None]) -> None:
        """On the loop: a renewal has its disk's name (or failed to get it)."""
        if self._naming.get(m.mac, (m, None))[1] is future:
            del self._naming[m.mac]
            self._report_naming(m, future)

    def _settle_name(self, mac: str) -> None:
        """Wait (blocking, bounded) for a machine's pending renames."""
        if mac not in self._naming:
            return
        m, future = self._naming.pop(mac)
        try:
            future.result(RENAME_TIMEOUT)
        except TimeoutError:
            self.bus.emit(Kind.DISK_FAILED, mac=mac, hostname=m.hostname,
                          why=f"its renewal was not given its name within {RENAME_TIMEOUT:.0f} s")
            return
        except Exception:  # reported below, from the future
            pass
        self._report_naming(m, future)

    def _report_naming(self, m: Machine, future: Future[None]) -> None:
        e = future.exception()
        if e is not None:
            self.bus.emit(Kind.DISK_FAILED, mac=m.mac, hostname=m.hostname,
                          why=f"its renewal was not given its name: {e}")

    async def _named_first(self, mac: str) -> None:
        """The last renewal's renames are done (the next renewal reuses its name)."""
        if mac in self._naming:
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(self._naming[mac][1])

    def _forget_standby(self, disk: Disk) -> None:
        """A disk no longer served takes its waiting renewal with it."""
        if disk.target.standby is not None:
            disk.target.standby.close()
            disk.target.standby = None
            self.store.drop_renewal(disk.machine)

    def _close_later(self, backend: Backend) -> None:
        def close() -> None:
            if backend in self._replaced:
                self._replaced.discard(backend)
                backend.close()

        self._replaced.add(backend)
        try:
            asyncio.get_running_loop().call_later(CLOSE_GRACE, close)
        except RuntimeError:  # no loop: nothing can still be using it
            close()

    def _fresh_backend(self, disk: Disk) -> Backend:
        """In a thread: a new disk beside the served one, opened (and
        claimed: nobody else can know it yet)."""
        backend = open_backend(self.store.make_renewal(disk.machine, disk.spec.luns[0]))
        try:
            backend.claim()
        except BaseException:
            backend.close()
            raise
        return backend

    async def adopt(self, mac: str) -> Machine | None:
        """unknown_machines: default: the MAC becomes a machine with the
        default profile and its own disk, served from now on. None if its
        disk cannot be made. Concurrent calls for one MAC share the work."""
        if mac in self._machines:
            return self._machines[mac]
        if mac in self._adopting:
            return await self._adopting[mac]
        future: asyncio.Future[Machine | None] = asyncio.get_running_loop().create_future()
        self._adopting[mac] = future
        try:
            machine = self._adopted(mac)
            disks = [] if machine is None else await asyncio.to_thread(self._open_disks, [machine])
            if not disks:
                machine = None
            else:
                self._machines[mac] = disks[0].machine
                self._install(disks[0])
                self._unbooted[mac] = time.time()
                if self.leases is not None:
                    self.leases.saw_unknown(mac, "adopted", self._unbooted[mac])
                    self.leases.commit()
                self.bus.emit(Kind.DHCP_ADOPTED, mac=mac, hostname=disks[0].machine.hostname,
                              target=disks[0].machine.target_iqn)
            future.set_result(machine)
            return machine
        finally:
            del self._adopting[mac]
            if not future.done():
                future.set_result(None)

    def _adoption_progress(self, event: Event, mac: str | None) -> None:
        """An adopted machine that logs in to its disk has booted and is
        kept; one that has not within ``dhcp.adopted_expiry`` seconds is
        forgotten with its disk (a storm of random MACs leaves nothing
        behind). Checked as events arrive: a quiet network holds nothing
        that needs freeing."""
        if mac is not None and mac in self._unbooted and event.kind is Kind.ISCSI_LOGIN:
            del self._unbooted[mac]
            if self.leases is not None:
                self.leases.saw_unknown(mac, "default", event.time)
                self.leases.commit()
            return
        expiry = self.cfg.dhcp.adopted_expiry if self.cfg.dhcp is not None else 0
        if not expiry:
            return
        for old, since in list(self._unbooted.items()):
            if event.time - since >= expiry:
                self._forget_adopted(old, expiry)

    def _forget_adopted(self, mac: str, expiry: int) -> None:
        del self._unbooted[mac]
        disk = self._disks.get(mac)
        if disk is not None and disk.target.sessions:
            return  # logged in after all (the login event was missed): keep it
        machine = self._machines.pop(mac, None)
        if disk is not None:
            del self._disks[mac]
            self.targets.pop(disk.target.name, None)
            self._forget_standby(disk)
            disk.target.close()
            self._settle_name(mac)
            self.store.remove_disk(disk.machine)
        self._forget_indexes()
        if self.leases is not None:
            self.leases.forget_unknown(mac)
            self.leases.commit()
        self.bus.emit(Kind.FLEET_ADOPTION_EXPIRED, mac=mac, hostname=machine.hostname if machine else None,
                      why=f"never logged in to its disk within {expiry} s of being adopted")

    def _adopted(self, mac: str) -> Machine | None:
        """The machine for a new MAC; None without a default profile or once
        ``dhcp.max_adopted`` machines were made (each holds a disk and
        descriptors: a storm of random MACs must not make thousands)."""
        profile, d = self.cfg.default_profile, self.cfg.dhcp
        if profile is None:
            return None
        # the ones being made count too (their disks are made off the loop,
        # meanwhile other MACs ask): else a burst of MACs overshoots the cap
        made = sum(1 for m in self._machines if m not in self.cfg.machines) + len(self._adopting) - 1
        if d is not None and made >= d.max_adopted:
            if not self._capped:  # said once, at the moment the cap is reached; each MAC is a debug line
                self.bus.emit(Kind.FLEET_ADOPTION_CAPPED, machines=made, why="dhcp.max_adopted reached")
            self._capped = True
            self.bus.emit(Kind.DHCP_DROPPED, mac=mac, why="not adopted: dhcp.max_adopted reached")
            return None
        self._capped = False
        return generated_machine(mac, self.cfg.iqn_prefix, profile)

    def _inventory(self, cfg: Config) -> dict[str, Machine]:
        """The config's machines, and those adopted before (policy default),
        with the disk they had, after a restart or reload."""
        machines = dict(cfg.machines)
        if self.leases is None or cfg.dhcp is None or cfg.dhcp.unknown is not UnknownPolicy.DEFAULT \
                or cfg.default_profile is None:
            return machines
        for mac, policy, first_seen, *_ in self.leases.unknown_machines():
            if policy in ("default", "adopted") and mac not in machines:
                machines[mac] = generated_machine(mac, cfg.iqn_prefix, cfg.default_profile)
                if policy == "adopted":
                    self._unbooted[mac] = first_seen
        return machines

    def _open_disks(self, machines: Iterable[Machine]) -> list[Disk]:
        """Make and open the disks of ``machines`` (off the loop where it
        can be), also of one not in the fleet yet (being adopted): the store
        makes a disk from the Machine itself. A disk that cannot be made is
        a ``disk.failed`` event."""
        out = []
        for m in machines:
            try:
                spec, made = self.store.prepared(m)
                spec = replace(spec, auth=self._auth_for(m))
                # an overlay kept from before (a restart) may have been booted: the next boot renews it
                out.append(Disk(m, self.profile(m), spec, Target.open(spec), fresh=made))
            except (ImageError, TargetConfigError, BackendError, OSError, ValueError) as e:
                self.bus.emit(Kind.DISK_FAILED, mac=m.mac, hostname=m.hostname, target=m.target_iqn,
                              why=f"will not boot: {e}")
        return out

    def _install(self, disk: Disk) -> None:
        self._disks[disk.machine.mac] = disk
        self.targets[disk.target.name] = disk.target
        self._forget_indexes()

    def _retire(self, target: Target) -> bool:
        """Stop serving a target; closed now unless logged in (False)."""
        if target.sessions:
            return False
        self.targets.pop(target.name, None)
        target.close()
        return True

    # -- reload --------------------------------------------------------------------------

    async def apply(self, new: Config) -> ConfigDiff:
        """Take a re-read config: machines and targets added, removed or
        changed take effect now (disks made off the loop); a machine or
        target still logged in keeps its disk until it logs out and
        bootsvc is reloaded again. Returns what changed. A change of where
        the disks are (``storage:``'s backend, pool, cluster or user) moves
        every machine to the new storage, or is refused as a whole
        (FleetError) while a machine uses its disk."""
        if new.storage.place != self.cfg.storage.place:
            await self._leave_storage(new)
        new_machines = self._inventory(new)
        diff = diff_configs(self.cfg, new, self._served_machines(), new_machines)
        old_cfg, old_store = self.cfg, self.store
        self.cfg = new
        self.store = image_store(new, self.machines, self.bus)
        self.store.succeed(old_store)
        kept = self._drop_machines(diff.machines.removed + diff.machines.changed)
        for mac in diff.machines.removed:
            if mac not in kept:
                self._machines.pop(mac, None)
        for mac, m in new_machines.items():
            if mac not in kept:
                self._machines[mac] = m
        self._forget_indexes()
        wanted_macs = [m for mac, m in new_machines.items() if mac not in self._disks]
        for disk in await asyncio.to_thread(self._open_disks, wanted_macs):
            self._install(disk)
        kept_targets = self._reconfigure_targets(old_cfg, new)
        diff = diff.with_kept(sorted(self._machines[mac].hostname for mac in kept) + kept_targets)
        self.bus.emit(Kind.FLEET_RELOADED, machines=len(self._machines), targets=len(self.targets),
                      summary=diff.summary())
        return diff

    async def _leave_storage(self, new: Config) -> None:
        """The disks and the secrets bootsvc made move to ``new``'s storage:
        every machine's disk is closed here (the next open makes or finds
        it there) and the stores of the old storage are closed. Refused
        while a machine is logged in to its disk or its renewal is being
        made: its disk on the new storage is another disk (another clone,
        another file), which must not replace the one its OS has mounted,
        and keeping it on the old storage beside the others would mean two
        stores of disks and of secrets at once."""
        self._refuse_busy(new)
        # nothing of the old stores may still be at work in a thread when they close
        await asyncio.gather(*self._adopting.values(), return_exceptions=True)
        for mac in list(self._naming):
            await self._named_first(mac)
            self._settle_name(mac)
        async with contextlib.AsyncExitStack() as held:
            for disk in list(self._disks.values()):  # a claim or release under way (in a thread) ends first
                await held.enter_async_context(disk.claim_lock)
            self._refuse_busy(new)  # a login may have come while waiting
            for mac, disk in list(self._disks.items()):
                self._not_idle(disk)
                self._forget_standby(disk)
                self._retire(disk.target)
                del self._disks[mac]
        self._forget_indexes()
        self.credentials.close()
        self.credentials = credential_store(new)
        self.store.close()

    def _refuse_busy(self, new: Config) -> None:
        busy = sorted(d.machine.hostname for d in self._disks.values() if d.target.sessions or d.renewing)
        if busy:
            raise FleetError(f"{new.path}: storage: where the disks are changed ({_place_change(self.cfg, new)}) "
                             f"while {len(busy)} machine(s) use their disks ({', '.join(busy)}); a disk cannot "
                             "move under a running machine, so nothing of this reload was applied: reload again "
                             "once they are shut down, or restart bootsvc")

    def _served_machines(self) -> dict[str, Machine]:
        return {mac: d.machine for mac, d in self._disks.items()} | {
            mac: m for mac, m in self._machines.items() if mac not in self._disks}

    def _drop_machines(self, macs: tuple[str, ...]) -> set[str]:
        """Retire the disks of removed or changed machines; the MACs of
        those kept because they are logged in."""
        kept = set()
        for mac in macs:
            disk = self._disks.get(mac)
            if disk is None:
                continue
            if not self._retire(disk.target):
                kept.add(mac)
                continue
            del self._disks[mac]
            self._forget_indexes()
        return kept

    def _reconfigure_targets(self, old: Config, new: Config) -> list[str]:
        """The config's own targets: same rules as the machines' disks.
        Returns the IQNs kept while logged in."""
        wanted_specs = {spec.iqn: spec for spec in new.targets}
        kept = []
        for iqn, spec in list(self._specs.items()):
            if wanted_specs.get(iqn) == spec:
                continue
            if self._retire(self.targets[iqn]):
                del self._specs[iqn]
            else:
                kept.append(iqn)
        for iqn, spec in wanted_specs.items():
            if iqn in self._specs:
                continue
            try:
                self.targets[iqn] = _open_claimed(self._with_reservations(spec))
                self._specs[iqn] = spec
            except (TargetConfigError, BackendError, OSError) as e:
                self.bus.emit(Kind.DISK_FAILED, target=iqn, why=f"not served: {e}")
        return kept

    def _with_reservations(self, spec: TargetSpec) -> TargetSpec:
        """A config target as served: its LUNs keep APTPL reservations under state_dir."""
        return replace(spec, reservations=str(self.store.reservations_dir(spec.iqn)))


def _place_change(old: Config, new: Config) -> str:
    """Where the disks were and are, in the config's words."""
    def where(cfg: Config) -> str:
        s = cfg.storage
        if s.backend is StorageBackend.FILE:
            return "files in state_dir"
        return f"pool {s.pool} of {s.conf}" + (f" as {s.user}" if s.user else "")
    return f"{where(old)}, now {where(new)}"


def _on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., object], *args: object) -> None:
    """``fn(*args)`` on ``loop`` from a worker thread, unless the loop is closed."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)


def _open_claimed(spec: TargetSpec) -> Target:
    """A config target, claimed at once (shared storage): the config names
    it for this server, unlike a machine's disk, claimed when it boots."""
    target = Target.open(spec)
    try:
        target.claim()
    except BaseException:
        target.close()
        raise
    return target


@dataclass(frozen=True)
class _AnyOf:
    """Fixed addresses, or one a test says is taken: a union without a copy."""

    fixed: frozenset[IPv4]
    taken: Callable[[IPv4], bool]

    def __contains__(self, item: object) -> bool:
        return item in self.fixed or (isinstance(item, IPv4) and self.taken(item))
