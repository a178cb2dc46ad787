"""Logging by default: one line per event at INFO without any option (the
systemd unit runs `bootsvc serve` bare), `-v` adds the DEBUG lines a client
can cause at will, `-q` keeps warnings only; both before or after the
subcommand."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from bootsvc.cli import EVENT_LOGGERS, build_parser, main, setup_logging
from bootsvc.events import Bus, Kind, LogWriter


@pytest.fixture(autouse=True)
def restore_levels() -> Iterator[None]:
    """setup_logging sets the event loggers' levels for the process: put
    them back so that other tests see the loggers as they were."""
    before = {name: logging.getLogger(name).level for name in (*EVENT_LOGGERS, "")}
    yield
    for name, level in before.items():
        logging.getLogger(name).setLevel(level)


def verbosity(*argv: str) -> tuple[int, bool]:
    parser = build_parser()
    opts = parser.options(parser.parse_args([*argv]))
    return opts.verbose, opts.quiet


def test_verbose_and_quiet_before_or_after_the_subcommand() -> None:
    assert verbosity("serve", "-c", "x") == (0, False)
    assert verbosity("-q", "serve", "-c", "x") == verbosity("serve", "-c", "x", "--quiet") == (0, True)
    assert verbosity("-v", "serve", "-c", "x", "-v") == verbosity("-vv", "export", "img", "--auth", "none") == (2, False)
    assert verbosity("-v", "image", "-v", "list", "-v", "-c", "x") == (3, False)
    assert verbosity("isns", "-c", "x", "dd", "add", "dd1", "-q") == (0, True)


def test_quiet_and_verbose_together_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["-q", "check", "-c", "x", "-v"])
    assert e.value.code == 2 and "-q and -v" in capsys.readouterr().err


def logged(caplog: pytest.LogCaptureFixture, verbose: int = 0, quiet: bool = False) -> list[tuple[str, int]]:
    """What a routine event, a warning and a client's garbage put in the log."""
    setup_logging(verbose, quiet)
    bus = Bus()
    bus.subscribe(LogWriter())
    caplog.clear()
    bus.emit(Kind.DHCP_ACK, mac="52:54:00:00:00:01", ip="10.0.0.5")
    bus.emit(Kind.BOOT_REFUSED, mac="52:54:00:00:00:01", why="no disk")
    bus.emit(Kind.TFTP_MALFORMED, peer="10.0.0.1", why="junk")
    return [(r.name, r.levelno) for r in caplog.records]


def test_one_line_per_event_by_default(caplog: pytest.LogCaptureFixture) -> None:
    assert logged(caplog) == [("bootsvc.dhcp", logging.INFO), ("bootsvc.boot", logging.WARNING)]


def test_quiet_keeps_warnings_only(caplog: pytest.LogCaptureFixture) -> None:
    assert logged(caplog, quiet=True) == [("bootsvc.boot", logging.WARNING)]


def test_verbose_shows_what_a_client_can_cause(caplog: pytest.LogCaptureFixture) -> None:
    assert logged(caplog, verbose=1) == [("bootsvc.dhcp", logging.INFO), ("bootsvc.boot", logging.WARNING),
                                         ("bootsvc.tftp", logging.DEBUG)]


def test_embedded_packages_log_their_events_by_default(caplog: pytest.LogCaptureFixture) -> None:
    """`bootsvc export` runs target/ without a bus: its events are its own
    log lines, on by default as bootsvc's are."""
    from target.events import Events

    setup_logging()
    Events(None, logging.getLogger("target.iscsi")).emit("iscsi.login", initiator="iqn.2026-11.t:a")
    assert [(r.name, r.levelno) for r in caplog.records] == [("target.iscsi", logging.INFO)]


def test_embedded_packages_with_a_bus_do_not_log_twice(caplog: pytest.LogCaptureFixture) -> None:
    """In `bootsvc serve`, target/ and isns/ report through the bus's sink:
    the LogWriter's line is the only one."""
    from target.events import Events

    setup_logging()
    bus = Bus()
    bus.subscribe(LogWriter())
    Events(bus.sink("iscsi"), logging.getLogger("target.iscsi")).emit("iscsi.login", initiator="iqn.2026-11.t:a")
    assert [(r.name, r.levelno) for r in caplog.records] == [("bootsvc.iscsi", logging.INFO)]
