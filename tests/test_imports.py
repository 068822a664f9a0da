"""The import directions of STYLE.md, checked two ways.

Statically: every `import`/`from … import` in each module's source (also those inside
functions and `if TYPE_CHECKING:` blocks), resolved to module names.

Dynamically: each module imported alone in a fresh interpreter, then `sys.modules` read.
`engine/__init__.py` is the public API and imports `engine.api.policy_engine` (and so the whole
pipeline), so importing any `engine.X` the ordinary way would load everything; to see what
a module itself pulls in, the subprocess first installs a bare `engine` package object
whose `__path__` is the source directory, so `engine/__init__.py` does not run.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "engine"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {
    _module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts
}

PACKAGES = {name for name, path in MODULES.items() if path.name == "__init__.py"}

# STYLE.md: these use the standard library only, and each other as listed here.
FOUNDATION: dict[str, set[str]] = {
    "engine.errors": set(),
    "engine.diagnostics": {"engine.errors"},  # PolicyError derives from PolicyctlError
    "engine.vocabulary": set(),
    # every node carries a diagnostics.Span and a vocabulary.Unit
    "engine.language.ast": {"engine.diagnostics", "engine.errors", "engine.vocabulary"},
    "engine.units": {"engine.vocabulary", "engine.errors"},
    "engine.language.schema": {"engine.vocabulary"},
    "engine.routing.metrics": set(),
    "engine.resources": set(),
    "engine.tokens": set(),
    "engine.build": set(),
}
CONCRETE_STORES = {
    "engine.limits.stores.memory",
    "engine.limits.stores.duckdb_store",
    "engine.limits.stores.redis_store",
    "engine.limits.stores.leases",
    "engine.limits.stores.redis_cluster_store",
}


def _is_cli(name: str) -> bool:
    return name == "engine.__main__" or name == "engine.cli" or name.startswith("engine.cli.")


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _is_stdlib(name: str) -> bool:
    return name.split(".")[0] in sys.stdlib_module_names


def imports_of(name: str) -> set[str]:
    """The modules `name` imports anywhere in its source. `from engine.language import ast`
    is the module `engine.language.ast`; `from engine import PolicyEngine` is the package
    `engine` itself."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in MODULES else base)
    return targets


IMPORTS: dict[str, set[str]] = {name: imports_of(name) for name in MODULES}


def importers_of(wanted: str) -> set[str]:
    return {name for name, targets in IMPORTS.items() if any(_within(t, wanted) for t in targets)}


# ----------------------------------------------------------------------------- static


def test_the_package_has_the_modules_style_md_names() -> None:
    expected = {
        "engine.language.ast", "engine.diagnostics", "engine.language.parser",
        "engine.routing.evaluator", "engine.api.policy_engine", "engine.cli",
        "engine.service.app", "engine.limits.stores",
    }  # fmt: skip
    assert expected <= set(MODULES)
    assert set(FOUNDATION) <= set(MODULES)


@pytest.mark.parametrize("name", sorted(FOUNDATION))
def test_foundation_modules_import_only_the_standard_library(name: str) -> None:
    foreign = {t for t in IMPORTS[name] if not _is_stdlib(t) and t not in FOUNDATION[name]}
    assert foreign == set(), f"{name} imports {sorted(foreign)}"


def test_the_evaluator_imports_no_parser_loader_or_store() -> None:
    targets = IMPORTS["engine.routing.evaluator"]
    forbidden = {
        t
        for t in targets
        if t in ("engine", "engine.language.parser", "engine.language.loader", "lark")
        or _within(t, "engine.limits.stores")
        or _within(t, "duckdb")
        or _within(t, "redis")
    }
    assert forbidden == set(), f"engine.routing.evaluator imports {sorted(forbidden)}"


@pytest.mark.parametrize("target", ["engine.cli", "engine.service"])
def test_nothing_imports_the_cli_or_the_service(target: str) -> None:
    offenders = {
        name for name in importers_of(target) if not _is_cli(name) and not _within(name, target)
    }
    assert offenders == set(), f"{sorted(offenders)} import {target}"


def test_only_the_api_watch_path_imports_watchdog() -> None:
    """STYLE.md: "only `api.watch` imports watchdog". `PolicyEngine.watch` (in engine.api)
    imports `engine.api.watch`, the watchdog observer wrapper; nothing else may reach it."""
    assert importers_of("watchdog") <= {"engine.api.policy_engine", "engine.api.watch"}
    assert importers_of("engine.api.watch") <= {"engine.api.policy_engine"}


# ----------------------------------------------------------------------------- dynamic

_ISOLATED = textwrap.dedent(
    """
    import importlib, json, sys, types
    root, name, isolated = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    sys.path.insert(0, root)
    before = set(sys.modules)
    if isolated:
        package = types.ModuleType("engine")
        package.__path__ = [root + "/engine"]
        sys.modules["engine"] = package
    module = importlib.import_module(name)
    loaded = sorted(set(sys.modules) - before)
    print(json.dumps({"file": getattr(module, "__file__", None), "loaded": loaded}))
    """
)


def _load(name: str, isolated: bool, cwd: Path) -> tuple[str, set[str] | str]:
    """The modules a fresh interpreter holds after importing `name`, or the error text."""
    done = subprocess.run(
        [sys.executable, "-c", _ISOLATED, str(ROOT), name, "1" if isolated else "0"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        return name, done.stderr.strip() or f"exit status {done.returncode}"
    result = json.loads(done.stdout)
    if not Path(result["file"]).resolve().is_relative_to(ROOT):
        return name, f"imported from {result['file']}, not from {ROOT}"
    return name, set(result["loaded"])


def _load_all(names: Iterable[str], isolated: bool, cwd: Path) -> dict[str, set[str] | str]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(lambda n: _load(n, isolated, cwd), names))


# Modules imported alone: all but the command line (which reads `engine.__version__` from
# the real package and is checked as a whole below).
ISOLATED = sorted(n for n in MODULES if n != "engine" and not _is_cli(n))


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str] | str]:
    return _load_all(ISOLATED, isolated=True, cwd=tmp_path_factory.mktemp("imports"))


@pytest.fixture(scope="module")
def loaded(results: dict[str, set[str] | str]) -> dict[str, set[str]]:
    """For each module imported alone in a fresh interpreter: every module it loaded."""
    return {name: mods for name, mods in results.items() if isinstance(mods, set)}


@pytest.fixture(scope="module")
def loaded_whole(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """`import engine` (the public API) and `import engine.cli`, the ordinary way."""
    found = _load_all(["engine", "engine.cli"], isolated=False, cwd=tmp_path_factory.mktemp("w"))
    for name, mods in found.items():
        assert isinstance(mods, set), f"import {name} failed:\n{mods}"
    return {name: mods for name, mods in found.items() if isinstance(mods, set)}


def test_every_module_imports_on_its_own(results: dict[str, set[str] | str]) -> None:
    """No module depends on `engine/__init__.py` having imported something else first."""
    failures = {name: error for name, error in results.items() if isinstance(error, str)}
    assert failures == {}


def _outside_stdlib(modules: set[str]) -> set[str]:
    """Non-standard modules, less the `engine` subpackages themselves (a subpackage's
    `__init__` that pulls in more shows up as those modules)."""
    return {m for m in modules if (not _is_stdlib(m) or _within(m, "engine")) and m not in PACKAGES}


def _closure(name: str) -> set[str]:
    seen: set[str] = set()
    todo = [name]
    while todo:
        for dep in FOUNDATION[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


@pytest.mark.parametrize("name", sorted(FOUNDATION))
def test_foundation_modules_load_only_the_standard_library(
    loaded: dict[str, set[str]], name: str
) -> None:
    allowed = {name} | _closure(name)
    # the packages holding them load too (their `__init__` is checked by what it loads)
    packages = {m.rsplit(".", i)[0] for m in allowed for i in range(1, m.count(".") + 1)}
    extra = _outside_stdlib(loaded[name]) - allowed - packages
    assert extra == set(), f"importing {name} alone loads {sorted(extra)}"


def test_importing_the_evaluator_loads_no_parser_loader_or_concrete_store(
    loaded: dict[str, set[str]],
) -> None:
    forbidden = {
        "lark",
        "engine.language.parser",
        "engine.language.loader",
        "duckdb",
        "redis",
        *CONCRETE_STORES,
    }
    assert loaded["engine.routing.evaluator"] & forbidden == set()
    assert "engine.routing.evaluator" in loaded["engine.routing.evaluator"]


def test_lark_is_loaded_only_through_the_parser(loaded: dict[str, set[str]]) -> None:
    assert "lark" in loaded["engine.language.parser"]
    offenders = sorted(
        name
        for name, mods in loaded.items()
        if "lark" in mods and "engine.language.parser" not in mods
    )
    assert offenders == []


def test_no_module_loads_the_cli_or_the_service(loaded: dict[str, set[str]]) -> None:
    top = {"engine.cli", "engine.service.app"}
    offenders = {
        name: sorted(mods & top)
        for name, mods in loaded.items()
        if not _within(name, "engine.service") and mods & top
    }
    assert offenders == {}
    assert "engine.cli" not in loaded["engine.service.app"]


def test_watchdog_is_loaded_only_by_the_watcher(loaded: dict[str, set[str]]) -> None:
    offenders = sorted(
        name for name, mods in loaded.items() if "watchdog" in mods and name != "engine.api.watch"
    )
    assert offenders == [], "watchdog must wait until PolicyEngine.watch() is called"


def test_pygls_is_loaded_only_by_the_language_server(loaded: dict[str, set[str]]) -> None:
    """pygls is the `lsp` extra: only `engine.lsp.server` may need it to import."""
    offenders = sorted(
        name for name, mods in loaded.items() if "pygls" in mods and name != "engine.lsp.server"
    )
    assert offenders == []
    assert "pygls" in loaded["engine.lsp.server"]


def test_litellm_waits_until_the_integration_is_used(loaded: dict[str, set[str]]) -> None:
    """`engine.integrations.litellm` imports litellm on first use (install, the classes),
    not when the module is imported: no module loads it by being imported."""
    assert "engine.integrations.litellm" in loaded
    offenders = sorted(name for name, mods in loaded.items() if "litellm" in mods)
    assert offenders == []


def test_the_public_api_and_the_cli_stay_light(loaded_whole: dict[str, set[str]]) -> None:
    """`import engine` and `policyctl eval/check` never pay for the server or the watcher."""
    heavy = {"engine.service.app", "watchdog", "uvicorn", "starlette"}
    assert loaded_whole["engine"] & (heavy | {"engine.cli"}) == set()
    assert loaded_whole["engine.cli"] & heavy == set()


# ----------------------------------------------------------------------------- layers

# docs/architecture.md: the rooms, lowest first. A module may import its own package and
# any package of a LOWER layer, never one of its own layer or above.
LAYERS: list[set[str]] = [
    {"engine.errors", "engine.vocabulary", "engine.diagnostics", "engine.units",
     "engine.resources", "engine.tokens", "engine.build"},
    {"engine.catalog", "engine.strategies", "engine.wire", "engine.editors",
     "engine.yaml_positions"},
    {"engine.language", "engine.features"},
    {"engine.analytics"},
    {"engine.limits"},
    {"engine.routing"},
    {"engine.alerts"},
    {"engine.api"},
    {"engine.service", "engine.simulate", "engine.integrations", "engine.migrate",
     "engine.lsp", "engine.policytest", "engine.policydiff", "engine.replay"},
    {"engine.cli", "engine.__main__", "engine"},
]  # fmt: skip
# what a top room may also use beside it: the command line drives the service and simulator
ALSO_ALLOWED = {
    "engine.cli": {
        "engine.service",
        "engine.simulate",
        "engine.migrate",
        "engine",
        "engine.policytest",
    },
    "engine.__main__": {"engine.cli"},
}


def _room(name: str) -> str | None:
    """The package or foundation module (a room of `LAYERS`) that `name` belongs to."""
    best: str | None = None
    for layer in LAYERS:
        for room in layer:
            inside = (_within(name, room) and room != "engine") or name == room
            if inside and (best is None or len(room) > len(best)):
                best = room
    return best


def _layer(room: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if room in layer)


def test_every_module_is_in_a_room_of_the_map() -> None:
    assert [name for name in MODULES if _room(name) is None] == []


def test_rooms_import_only_lower_layers() -> None:
    upward: list[str] = []
    for name, targets in IMPORTS.items():
        room = _room(name)
        assert room is not None
        for target in targets:
            if not _within(target, "engine"):
                continue
            other = _room(target)
            if other is None or other == room or other in ALSO_ALLOWED.get(room, set()):
                continue
            if _layer(room) == _layer(other) == 0 and target in FOUNDATION.get(name, set()):
                continue  # the foundation's own edges, listed in FOUNDATION
            if _layer(other) >= _layer(room):
                upward.append(f"{name} -> {target}")
    assert upward == [], "imports up or across the map:\n" + "\n".join(sorted(upward))


@pytest.mark.parametrize(
    ("driver", "allowed"),
    [
        ("duckdb", {"engine.analytics", "engine.limits.stores.duckdb_store"}),
        ("lark", {"engine.language.parser"}),
        ("pygments", {"engine.editors.pygments_lexer"}),
        ("litellm", {"engine.integrations", "engine.catalog.litellm"}),
        ("lsprotocol", {"engine.lsp.server"}),
        ("pygls", {"engine.lsp.server"}),
        ("prometheus_client", {"engine.service.telemetry"}),
        (
            "redis",
            {
                "engine.limits.stores.redis_store",
                "engine.limits.stores.redis_cluster_store",
                "engine.routing.shared_health",
            },
        ),
        ("starlette", {"engine.service"}),
        ("uvicorn", {"engine.service"}),
        ("watchdog", {"engine.api.watch"}),
    ],
)
def test_drivers_stay_in_their_rooms(driver: str, allowed: set[str]) -> None:
    offenders = {
        name for name in importers_of(driver) if not any(_within(name, a) for a in allowed)
    }
    assert offenders == set(), f"{sorted(offenders)} import {driver}"
