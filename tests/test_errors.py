"""One error base: every error class in `engine` is a PolicyctlError with its exit code.

The classes are found by importing every module of the package, so a new error class
without the base, or without a line in EXIT_CODES below, fails here.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import engine
from engine.catalog.model import CatalogError
from engine.cli import common, main, schema_cmd
from engine.diagnostics import Diagnostic, PolicyError, Source, Span
from engine.errors import (
    EXIT_BAD_INPUT,
    EXIT_BUSY,
    EXIT_DENIED,
    EXIT_ERROR,
    EXIT_OK,
    PolicyctlError,
)
from engine.limits.stores.base import ConfigurationError, StoreBusyError
from engine.simulate import ScenarioError

# every error class a user can meet, and the exit code `policyctl` ends with when it does
EXIT_CODES: dict[str, int] = {
    "engine.analytics.decision_log.LogSourceError": EXIT_BAD_INPUT,
    "engine.analytics.importer.OutcomeImportError": EXIT_BAD_INPUT,
    "engine.analytics.queries.ExportError": EXIT_BAD_INPUT,
    "engine.analytics.salvage.StateWriteError": EXIT_ERROR,
    "engine.api.policy_engine.EngineClosedError": EXIT_ERROR,
    "engine.catalog.litellm.LiteLLMMissing": EXIT_BAD_INPUT,
    "engine.catalog.model.CatalogError": EXIT_BAD_INPUT,
    "engine.cli.common.UsageError": EXIT_BAD_INPUT,
    "engine.cli.fmt_cmd.WriteError": EXIT_ERROR,
    "engine.cli.lsp_cmd.LspMissing": EXIT_BAD_INPUT,
    "engine.cli.migrate_cmd.TranslationDoesNotCheck": EXIT_ERROR,
    "engine.cli.server_client.ServerFailed": EXIT_ERROR,
    "engine.cli.server_client.ServerRefusedToken": EXIT_BAD_INPUT,
    "engine.cli.server_client.ServerRejected": EXIT_BAD_INPUT,
    "engine.cli.server_client.ServerUnreachable": EXIT_ERROR,
    "engine.diagnostics.PolicyError": EXIT_BAD_INPUT,
    "engine.integrations.litellm.UnmappedDeployment": EXIT_BAD_INPUT,
    "engine.language.domain.TooComplex": EXIT_ERROR,
    "engine.language.explain.UnknownCode": EXIT_BAD_INPUT,
    "engine.limits.admin.AdminError": EXIT_BAD_INPUT,
    "engine.limits.stores.base.ConfigurationError": EXIT_BAD_INPUT,
    "engine.limits.stores.base.StoreBusyError": EXIT_BUSY,
    "engine.limits.stores.base.StoreUnavailableError": EXIT_ERROR,
    "engine.migrate.config.ConfigError": EXIT_BAD_INPUT,
    "engine.policytest.run.TestInputError": EXIT_BAD_INPUT,
    "engine.policytest.spec.TestFileError": EXIT_BAD_INPUT,
    "engine.replay.run.ReplayError": EXIT_BAD_INPUT,
    "engine.routing.request_log.Unlogged": EXIT_BAD_INPUT,
    "engine.routing.request.RequestError": EXIT_BAD_INPUT,
    "engine.service.admin_routes.AdminCallError": EXIT_BAD_INPUT,
    "engine.service.body.BodyError": EXIT_BAD_INPUT,
    "engine.simulate.report.PlotUnavailable": EXIT_BAD_INPUT,
    "engine.simulate.content.ContentError": EXIT_BAD_INPUT,
    "engine.simulate.scenario.ScenarioError": EXIT_BAD_INPUT,
    "engine.units.TooManyDigitsError": EXIT_BAD_INPUT,
    "engine.units.UnitError": EXIT_BAD_INPUT,
    "engine.wire.plugins.FeatureDeclarationError": EXIT_BAD_INPUT,
    "engine.wire.record.WireError": EXIT_BAD_INPUT,
    "engine.yaml_positions.YamlSyntaxError": EXIT_BAD_INPUT,
}
# printed as they are: their text starts with the file (and line) it is about
LOCATED = {
    "engine.diagnostics.PolicyError",
    "engine.catalog.model.CatalogError",
    "engine.migrate.config.ConfigError",
    "engine.policytest.run.TestInputError",
    "engine.policytest.spec.TestFileError",
    "engine.yaml_positions.YamlSyntaxError",
}
# the errors that existing `except ValueError` / `except RuntimeError` callers rely on
OTHER_BASES: dict[str, type[Exception]] = {
    "engine.analytics.salvage.StateWriteError": RuntimeError,
    "engine.api.policy_engine.EngineClosedError": RuntimeError,
    "engine.integrations.litellm.UnmappedDeployment": LookupError,
    "engine.language.explain.UnknownCode": LookupError,
    "engine.limits.admin.AdminError": ValueError,
    "engine.limits.stores.base.ConfigurationError": ValueError,
    "engine.limits.stores.base.StoreBusyError": RuntimeError,
    "engine.limits.stores.base.StoreUnavailableError": RuntimeError,
    "engine.routing.request.RequestError": ValueError,
    "engine.routing.request_log.Unlogged": LookupError,
    "engine.simulate.content.ContentError": ValueError,
    "engine.units.TooManyDigitsError": ValueError,
    "engine.units.UnitError": ValueError,
    "engine.wire.plugins.FeatureDeclarationError": TypeError,
    "engine.wire.record.WireError": ValueError,
}


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _error_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(engine.__path__, "engine."):
        if info.name == "engine.__main__":
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == info.name:
                found[_name(obj)] = obj
    found.pop("engine.errors.PolicyctlError")
    return found


ERRORS = _error_classes()


def test_every_error_class_is_listed() -> None:
    assert sorted(ERRORS) == sorted(EXIT_CODES)


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_every_error_derives_from_the_base_with_its_exit_code(name: str) -> None:
    cls = ERRORS[name]
    assert issubclass(cls, PolicyctlError), f"{name} does not derive from PolicyctlError"
    assert cls.exit_code == EXIT_CODES.get(name), f"{name} exits with {cls.exit_code}"
    assert cls.located == (name in LOCATED)
    if name in OTHER_BASES:
        assert issubclass(cls, OTHER_BASES[name])


def test_the_exit_codes_have_one_home() -> None:
    assert (EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_DENIED, EXIT_BUSY) == (0, 1, 2, 3, 4)
    assert common.EXIT_BAD_INPUT is EXIT_BAD_INPUT and common.EXIT_BUSY is EXIT_BUSY
    assert engine.PolicyctlError is PolicyctlError


def test_a_subclass_states_what_differs_in_its_class_line() -> None:
    class Plain(PolicyctlError, ValueError):
        pass

    class Busy(Plain, exit_code=EXIT_BUSY):
        pass

    class Located(Busy, located=True):
        pass

    assert (Plain.exit_code, Busy.exit_code, Located.exit_code) == (2, 4, 4)
    assert Plain("bad `x`").cli_text() == "policyctl: error: bad `x`"
    assert Located("p.policy:1:2: error: bad").cli_text() == "p.policy:1:2: error: bad"
    assert isinstance(Located("x"), ValueError)


def _policy_error() -> PolicyError:
    source = Source("p.policy", "defaults { strategy fast }\n")
    return PolicyError([Diagnostic("E100", "unknown strategy `fast`", Span(source, 20, 24))])


@pytest.mark.parametrize(
    ("error", "code", "text"),
    [
        (common.UsageError("bad `--x`"), 2, "policyctl: error: bad `--x`\n"),
        (ConfigurationError("bad url"), 2, "policyctl: error: bad url\n"),
        (StoreBusyError("state file is in use"), 4, "policyctl: error: state file is in use\n"),
        (CatalogError(["m.yaml: bad", "m.yaml: worse"]), 2, "m.yaml: bad\nm.yaml: worse\n"),
        (ScenarioError(["s.yaml: a", "s.yaml: b"]), 2,
         "policyctl: error: s.yaml: a\npolicyctl: error: s.yaml: b\n"),
    ],
)  # fmt: skip
def test_the_cli_catches_the_base_once(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: PolicyctlError,
    code: int,
    text: str,
) -> None:
    def run(args: object) -> int:
        raise error

    monkeypatch.setattr(schema_cmd, "run", run)
    assert main(["schema", "request"]) == code
    assert capsys.readouterr().err == text


def test_a_policy_error_prints_its_diagnostics_as_they_are(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    error = _policy_error()

    def run(args: object) -> int:
        raise error

    monkeypatch.setattr(schema_cmd, "run", run)
    assert main(["schema", "request"]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err == str(error) + "\n"
