"""The console-script launcher: its table matches pyproject.toml, and a missing extra is a hint."""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
import tomllib
import types
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name

from ticketing import _launch
from ticketing._launch import TOOLS, Tool

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def extra_distributions(extra: str) -> set[NormalizedName]:
    """Distributions an extra adds over the base (not counting other extras it includes)."""
    names = {
        canonicalize_name(Requirement(r).name) for r in PROJECT["optional-dependencies"][extra]
    }
    base = {canonicalize_name(Requirement(r).name) for r in PROJECT["dependencies"]}
    return names - base - {"ticketing"}


def test_every_console_script_goes_through_the_launcher() -> None:
    scripts = PROJECT["scripts"]
    assert set(scripts) == set(TOOLS)
    for command, target in scripts.items():
        module, _, function = target.partition(":")
        assert module == "ticketing._launch", command
        assert callable(getattr(_launch, function)), command


@pytest.mark.parametrize("command", sorted(TOOLS))
def test_each_tool_checks_exactly_its_extra(command: str) -> None:
    tool = TOOLS[command]
    owners = importlib.metadata.packages_distributions()
    checked = {canonicalize_name(d) for module in tool.modules for d in owners.get(module, [])}
    assert checked == extra_distributions(tool.extra)


def test_dev_installs_every_extra() -> None:
    dev = [Requirement(r) for r in PROJECT["optional-dependencies"]["dev"]]
    (self_ref,) = [r for r in dev if r.name == "ticketing"]
    # Plus the add-ons no tool needs but the tests exercise (tracing, issue 16).
    assert self_ref.extras == {tool.extra for tool in TOOLS.values()} | {"otel"}


@pytest.mark.parametrize("command", sorted(TOOLS))
def test_the_real_entry_points_exist(command: str) -> None:
    module, _, function = TOOLS[command].entry.partition(":")
    assert callable(getattr(importlib.import_module(module), function))


def test_a_missing_extra_prints_the_install_command_and_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    tool = Tool("ticketd", "server", ("json", "no_such_module_for_this_test"), "json:dumps")
    assert _launch.run(tool) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "ticketd needs the server extra: pip install 'ticketing[server]'",
        "(not installed: no_such_module_for_this_test)",
    ]


def test_with_its_extra_present_the_real_main_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = types.ModuleType("fake_tool_main")
    fake.main = lambda: 17  # type: ignore[attr-defined]  # a module built at run time
    monkeypatch.setitem(sys.modules, "fake_tool_main", fake)
    assert _launch.run(Tool("fake", "cli", ("json",), "fake_tool_main:main")) == 17
    assert capsys.readouterr() == ("", "")


def test_a_missing_dependency_of_a_dependency_is_a_hint_too(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "tool_with_missing_dep.py").write_text("import dependency_nobody_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    tool = Tool("ticketing-rush", "rush", ("json",), "tool_with_missing_dep:main")
    assert _launch.run(tool) == 2
    assert capsys.readouterr().err.splitlines() == [
        "ticketing-rush needs the rush extra: pip install 'ticketing[rush]'",
        "(not installed: dependency_nobody_installed)",
    ]


def test_a_missing_module_of_our_own_is_a_bug_and_not_hidden() -> None:
    with pytest.raises(ModuleNotFoundError):
        _launch.run(Tool("ticketctl", "cli", ("json",), "ticketing.no_such_module:main"))
