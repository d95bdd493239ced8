"""Every command line of the project explains itself: each parser has a description,
each argument a help text, and each option with a default says which in ``--help``;
every console script pyproject.toml declares is installed and leads to a callable
``main`` that answers ``--help``."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import pathlib
import re
import tomllib
from collections.abc import Callable, Iterator

import pytest

pytestmark = pytest.mark.unit

ROOT = pathlib.Path(__file__).resolve().parents[2]

#: Every module with a command line and a ``build_parser()``.
WITH_BUILDER = (
    "services.api.__main__",
    "services.ingest.__main__",
    "services.matcher.__main__",
    "services.dispatcher.__main__",
    "services.indexer.__main__",
    "tools.backup",
    "tools.seal_headers",
    "tools.rotate_secrets",
    "tools.contracts",
    "tools.prometheus_rule",
    "tools.demo",
    "tools.loadgen",
    "tools.chaos",
    "tools.fuzz_engine",
    "tools.bench_ingest",
    "tools.bench_matcher",
    "tools.bench_dispatcher",
    "tools.raw_dispatch",
    "tools.dispatch_ladder",
    "tools.bench_indexer",
    "tools.bench_e2e",
)
#: tools.migrate builds its parser inside main(); the test takes it from there.
WITHOUT_BUILDER = ("tools.migrate",)
#: Command lines without arguments to explain.
NO_ARGUMENTS = ("tools.bench_templates",)


class Captured(Exception):  # noqa: N818 (a signal, not an error)
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__("parser captured")
        self.parser = parser


def captured_parser(module: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser ``main`` builds, taken at its ``parse_args`` before anything runs."""

    def capture(self: argparse.ArgumentParser, *_: object, **__: object) -> None:
        raise Captured(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(Captured) as caught:
        importlib.import_module(module).main([])
    return caught.value.parser


def parser_of(module: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    if module in WITHOUT_BUILDER:
        return captured_parser(module, monkeypatch)
    built = importlib.import_module(module).build_parser()
    assert isinstance(built, argparse.ArgumentParser)
    return built


def parsers(top: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parser and every subcommand's, depth first."""
    yield top
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from parsers(sub)


def missing_explanations(top: argparse.ArgumentParser) -> list[str]:
    problems: list[str] = []
    for parser in parsers(top):
        if not (parser.description or "").strip():
            problems.append(f"{parser.prog}: no description")
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            name = "/".join(action.option_strings) or action.dest
            if isinstance(action, argparse._SubParsersAction):
                problems.extend(
                    f"{parser.prog} {choice.dest}: no help"
                    for choice in action._choices_actions
                    if not (choice.help or "").strip()
                )
                continue
            if not (action.help or "").strip():
                problems.append(f"{parser.prog} {name}: no help")
                continue
            default = action.default
            if (
                action.option_strings
                and not action.required
                and default is not None
                and default is not argparse.SUPPRESS
                and "%(default)" not in (formatter._get_help_string(action) or "")
            ):
                problems.append(f"{parser.prog} {name}: the default {default!r} is not shown")
        parser.format_help()  # every %-placeholder in the help texts resolves
    return problems


@pytest.mark.parametrize("module", WITH_BUILDER + WITHOUT_BUILDER)
def test_every_argument_is_explained_and_every_default_shown(
    module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert missing_explanations(parser_of(module, monkeypatch)) == []


@pytest.mark.parametrize("module", WITH_BUILDER + WITHOUT_BUILDER)
def test_help_answers_before_anything_runs(
    module: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    description = parser_of(module, monkeypatch).description or ""
    monkeypatch.undo()
    with pytest.raises(SystemExit) as stopped:
        importlib.import_module(module).main(["--help"])
    assert stopped.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert " ".join(description.split())[:60] in out


def test_the_checks_catch_what_they_are_for() -> None:
    parser = argparse.ArgumentParser(formatter_class=argparse.HelpFormatter)
    parser.add_argument("--rate", type=float, default=5.0, help="events/s")
    parser.add_argument("--quiet", action="store_true")
    assert missing_explanations(parser) == [
        f"{parser.prog}: no description",
        f"{parser.prog} --rate: the default 5.0 is not shown",
        f"{parser.prog} --quiet: no help",
    ]


def test_every_command_line_is_checked() -> None:
    """A new module parsing arguments joins the lists above."""
    found = set()
    for path in [*ROOT.glob("tools/*.py"), *ROOT.glob("services/*/__main__.py")]:
        if re.search(r"\bargparse\b|def main\(", path.read_text()):
            found.add(".".join(path.relative_to(ROOT).with_suffix("").parts))
    checked = set(WITH_BUILDER + WITHOUT_BUILDER + NO_ARGUMENTS)
    assert found - checked == set()


def declared_scripts() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    scripts: dict[str, str] = project["scripts"]
    return scripts


def test_the_console_scripts_cover_the_services_and_the_operators_tools() -> None:
    targets = set(declared_scripts().values())
    for needed in (
        "services.api.__main__:main",
        "services.ingest.__main__:main",
        "services.matcher.__main__:main",
        "services.dispatcher.__main__:main",
        "services.indexer.__main__:main",
        "tools.migrate:main",
        "tools.backup:main",
        "tools.demo:main",
    ):
        assert needed in targets


@pytest.mark.parametrize("script", sorted(declared_scripts()))
def test_every_console_script_leads_to_a_main_that_answers_help(
    script: str, capsys: pytest.CaptureFixture[str]
) -> None:
    module, _, attr = declared_scripts()[script].partition(":")
    main: Callable[[list[str] | None], object] = getattr(importlib.import_module(module), attr)
    assert callable(main)
    with pytest.raises(SystemExit) as stopped:
        main(["--help"])
    assert stopped.value.code == 0
    assert "usage:" in capsys.readouterr().out
    assert module in WITH_BUILDER + WITHOUT_BUILDER


def test_the_installed_scripts_are_the_declared_ones() -> None:
    """make deps reinstalls the package when pyproject.toml changes."""
    installed = {
        ep.name: ep.value
        for ep in importlib.metadata.distribution("erc8004-backend").entry_points
        if ep.group == "console_scripts"
    }
    assert installed == declared_scripts()
