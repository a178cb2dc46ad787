"""The service runner's process-wide parts: the loop's handler for
descriptor exhaustion says it in one line at most once a second; health
is serving only when every service serves."""

from __future__ import annotations

import asyncio
import errno

from bootsvc.service import QuietExhaustion, Services


def test_descriptor_exhaustion_is_said_once_a_second() -> None:
    said: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        handler = QuietExhaustion(said.append, interval=0.2)
        error = OSError(errno.EMFILE, "Too many open files")
        for _ in range(50):
            handler(loop, {"message": "socket.accept() out of system resource", "exception": error})
        await asyncio.sleep(0.25)
        handler(loop, {"message": "socket.accept() out of system resource", "exception": error})

    asyncio.run(main())
    assert len(said) == 2 and "Too many open files" in said[0] and "(49 more since)" in said[1]


def test_health_names_the_services_that_do_not_serve() -> None:
    async def ok() -> None:
        pass

    async def taken() -> None:
        raise OSError(errno.EADDRINUSE, "Address already in use")

    said: list[str] = []
    services = Services(report=said.append)
    services.add("dhcp", taken, ok, where="0.0.0.0:67")
    services.add("http", ok, ok)
    assert services.health().text() == "degraded\ndhcp: not started\nhttp: not started\n"
    asyncio.run(services.start())
    health = services.health()
    assert not health.serving and health.text() == "degraded\ndhcp: failed: Address already in use\nhttp: serving\n"
    services.items[0].state, services.items[0].why = services.items[1].state, ""
    assert services.health().serving and services.health().text() == "ok\ndhcp: serving\nhttp: serving\n"


def test_a_service_that_fails_after_it_started_is_degraded_while_it_does() -> None:
    async def ok() -> None:
        pass

    trouble: list[str] = []
    services = Services(report=lambda line: None)
    services.add("dhcp", ok, ok, trouble=lambda: trouble[-1] if trouble else None)
    assert services.health().text() == "degraded\ndhcp: not started\n"  # not asked before it started
    asyncio.run(services.start())
    assert services.health().serving
    trouble.append("the DHCP worker process ended; it is being started again")
    assert services.health().text() == "degraded\ndhcp: failed: the DHCP worker process ended; it is being " \
                                       "started again\n"
    trouble.clear()
    assert services.health().text() == "ok\ndhcp: serving\n"
