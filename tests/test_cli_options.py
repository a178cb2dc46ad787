"""The global options -c/--config, -v and -q go anywhere on the command
line: before the subcommand, after it, after its verb (README "Command
line"); `bootsvc --version` says the installed version."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootsvc import __version__
from bootsvc.cli import EVENT_LOGGERS, build_parser, main, version
from bootsvc.cli_parser import GlobalOptions

CFG = "x.yaml"

# Each command with a verb (or none), the same command line with -c before
# the subcommand, after it and at the end.
COMMANDS = [
    ("serve",), ("check",), ("reload",), ("machines", "--json"), ("timeline", "node01", "-n", "2"),
    ("image", "list"), ("image", "create", "node01"), ("image", "check", "--repair"),
    ("isns", "list", "dds"), ("isns", "dd", "add", "dd1", "iqn.2026-11.t:a"), ("vm", "--count", "2"),
]


@pytest.fixture(autouse=True)
def restore_levels() -> Iterator[None]:
    """main() sets the event loggers' levels: put them back for other tests."""
    before = {name: logging.getLogger(name).level for name in (*EVENT_LOGGERS, "")}
    yield
    for name, level in before.items():
        logging.getLogger(name).setLevel(level)


def parsed(*argv: str) -> tuple[GlobalOptions, dict[str, object]]:
    parser = build_parser()
    args = parser.parse_args(list(argv))
    return parser.options(args), {k: v for k, v in vars(args).items()
                                  if not k.startswith(("verbose_", "quiet_")) and k != "config"}


@pytest.mark.parametrize("words", COMMANDS, ids=" ".join)
def test_config_and_verbosity_anywhere(words: tuple[str, ...]) -> None:
    first, rest = words[0], words[1:]
    forms = [
        ("-c", CFG, "-v", first, *rest),
        (first, "-c", CFG, "-v", *rest),
        (first, *rest, "-c", CFG, "-v"),
        ("-v", first, *rest, "--config", CFG),
        (f"--config={CFG}", first, "-v", *rest),
    ]
    results = [parsed(*f) for f in forms]
    assert all(r == results[0] for r in results), results
    assert results[0][0] == GlobalOptions(config=CFG, verbose=1, quiet=False)


def test_verb_level_options_after_a_verb() -> None:
    """Options of the verb itself still parse where they did."""
    _, args = parsed("image", "check", "node01", "--repair", "-c", CFG)
    assert args["host"] == ["node01"] and args["repair"] is True
    _, args = parsed("-c", CFG, "isns", "list", "portals", "--json")
    assert args["what"] == "portals" and args["json"] is True


def test_the_last_config_wins() -> None:
    assert parsed("-c", "a.yaml", "check", "-c", "b.yaml")[0].config == "b.yaml"


def test_a_missing_config_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["serve"], ["-v", "image", "list"], ["isns", "dd", "list"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        assert f"{argv[-2] if argv[0] == '-v' else argv[0]} needs the config file: -c FILE" in capsys.readouterr().err


def test_export_refuses_a_config(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["-c", CFG, "export", "img", "--auth", "none"], ["export", "img", "-c", CFG, "--auth", "none"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and "export reads no config file" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"bootsvc {version()}\n"
    assert version() == __version__  # pyproject.toml reads the version from bootsvc/__init__.py


def write_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "bootsvc.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\niqn_prefix: iqn.2026-11.test.cli\n"
                   "machines:\n  52:54:00:00:00:01: {hostname: node01, profile: demo-linux}\n")
    return cfg


def test_commands_run_with_the_config_anywhere(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The real commands, not only their parsing: the same output whichever
    place -c takes."""
    cfg = str(write_config(tmp_path))
    for words in (("check",), ("machines", "--json"), ("image", "list"), ("isns", "list")):
        outputs = []
        for argv in (["-c", cfg, *words], [words[0], "-c", cfg, *words[1:]], [*words, "-c", cfg]):
            code = main(argv)
            outputs.append((code, capsys.readouterr()))
        assert all(o == outputs[0] for o in outputs), (words, outputs)
        assert outputs[0][0] == (1 if words[0] == "isns" else 0), outputs[0]  # no iSNS server configured
