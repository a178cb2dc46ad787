"""The command line's parser: the global options (``-c/--config``, ``-v``,
``-q``) are taken anywhere, before the subcommand, after it or after its
verbs, so ``bootsvc -c x.yaml -v image list`` and ``bootsvc image list -c
x.yaml -v`` are the same command."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

VERBOSE = "verbose_"
QUIET = "quiet_"
NEEDS_CONFIG = "needs_config"


class CliParser(argparse.ArgumentParser):
    """An ArgumentParser taking the global options, whose subcommand
    parsers, at any depth, are CliParsers too (``add_subparsers`` makes
    parsers of its parent's class): a new subcommand or verb takes them
    without a line of its own.

    argparse parses a subcommand's arguments into a namespace of its own,
    then copies that over the parent's, so a default there would erase what
    was given before the subcommand: the options default to SUPPRESS
    (absent unless given; the last ``-c`` wins). ``-v`` adds up wherever it
    is given, so each parser counts in an attribute of its own
    (``verbose_<id>``, likewise ``quiet_<id>``), which :class:`GlobalOptions`
    adds up. ``config=False``: a command that reads no config file (its
    ``-c`` is left out of its help, and refused)."""

    def __init__(self, *args: Any, config: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("-c", "--config", default=argparse.SUPPRESS, metavar="FILE",
                          help="the config file, bootsvc.yaml (here or anywhere on the command line)"
                          if config else argparse.SUPPRESS)
        self.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, dest=f"{VERBOSE}{id(self)}",
                          help="debug log lines too (-vv: also other libraries' debug)")
        self.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                          dest=f"{QUIET}{id(self)}", help="warnings and errors only, not one line per event")

    def options(self, args: argparse.Namespace) -> GlobalOptions:
        """The global options wherever they were given; a usage error (exit
        2) when they contradict each other or the command lacks its config."""
        given = vars(args)
        opts = GlobalOptions(config=given.get("config"),
                             verbose=sum(v for k, v in given.items() if k.startswith(VERBOSE)),
                             quiet=any(v for k, v in given.items() if k.startswith(QUIET)))
        if opts.verbose and opts.quiet:
            self.error("-q and -v contradict each other: give one")
        if given.get(NEEDS_CONFIG) and opts.config is None:
            self.error(f"{args.command} needs the config file: -c FILE, before or after {args.command}")
        if given.get(NEEDS_CONFIG) is False and opts.config is not None:
            self.error(f"{args.command} reads no config file: leave -c out")
        return opts


def command(sub: argparse._SubParsersAction, name: str, help: str,  # type: ignore[type-arg]
            config: bool = True) -> CliParser:
    """A subcommand of ``sub`` (its parent's ``add_subparsers()``);
    ``config``: it reads the config file, so ``-c FILE`` must be given
    somewhere (:meth:`CliParser.options` says so when it is not)."""
    p: CliParser = sub.add_parser(name, help=help, config=config)
    p.set_defaults(**{NEEDS_CONFIG: config})
    return p


@dataclass(frozen=True)
class GlobalOptions:
    """What the global options say, wherever on the command line they were."""

    config: str | None
    verbose: int
    quiet: bool
