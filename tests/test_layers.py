"""The package's import rules, read from the source with ``ast`` (nothing is imported or run).

* Layers point one way: the core (``step``, ``clustering``, ``evaluation``, ``inspection``) never imports
  ``adapters``, ``demo`` or the CLI; ``adapters`` never import ``demo`` or the CLI. Inside the core, ``clustering``
  imports nothing else of the package, and ``step`` never imports ``evaluation`` or ``inspection``. ``testing``
  (tiny models, the reference step) sits beside the core: only ``demo``, tests and benchmarks import it.
* No module takes a private name (a module or symbol whose name starts with ``_``) from another subpackage.

Imports inside functions (lazy imports) count the same as module-level ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "meds_core"

# What each layer may not import (prefixes of module names).
FORBIDDEN = {
    "meds_core.clustering": ("meds_core.step", "meds_core.evaluation", "meds_core.inspection", "meds_core.adapters",
                             "meds_core.demo", "meds_core.cli", "meds_core.testing"),
    "meds_core.step": ("meds_core.evaluation", "meds_core.inspection", "meds_core.adapters", "meds_core.demo",
                       "meds_core.cli", "meds_core.testing"),
    "meds_core.evaluation": ("meds_core.inspection", "meds_core.adapters", "meds_core.demo", "meds_core.cli",
                             "meds_core.testing"),
    "meds_core.inspection": ("meds_core.evaluation", "meds_core.adapters", "meds_core.demo", "meds_core.cli",
                             "meds_core.testing"),
    "meds_core.adapters": ("meds_core.demo", "meds_core.cli", "meds_core.testing"),
    "meds_core.testing": ("meds_core.evaluation", "meds_core.inspection", "meds_core.adapters", "meds_core.demo",
                          "meds_core.cli"),
}

def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _package(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rsplit(".", 1)[0]


def _imports(module: str, path: Path) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import statement of the file."""
    package = _package(module, path)
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out += [(target, a.name, node.lineno) for a in node.names]
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


MODULES = _modules()


def test_the_rules_see_every_subpackage():
    seen = {m.split(".")[1] for m in MODULES if m.count(".") >= 1}
    assert {"step", "clustering", "evaluation", "inspection", "adapters", "demo", "cli"} <= seen
    assert any(_imports(m, p) for m, p in MODULES.items() if m.startswith("meds_core.adapters.verl"))


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_only_downwards(layer):
    bad = [f"{MODULES[m].relative_to(ROOT.parent)}:{line} imports {target}"
           for m in MODULES if m == layer or m.startswith(layer + ".")
           for target, _, line in _imports(m, MODULES[m])
           if any(target == f or target.startswith(f + ".") for f in FORBIDDEN[layer])]
    assert not bad, "imports against the layering (core <- adapters <- demo and cli):\n" + "\n".join(bad)


def test_no_private_name_is_imported_from_another_subpackage():
    bad = []
    for m, path in MODULES.items():
        own = _package(m, path)
        for target, name, line in _imports(m, path):
            if not target.startswith("meds_core"):
                continue
            # a name imported from a package may be a submodule: `from meds_core.step import _native_ops`
            full = f"{target}.{name}" if name and f"{target}.{name}" in MODULES else target
            home = _package(full, MODULES[full]) if full in MODULES else target
            private = any(_private(p) for p in full.split(".")) or (name is not None and _private(name))
            if private and home != own:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line} takes {name or target} from {target}")
    assert not bad, "private names used outside their subpackage:\n" + "\n".join(bad)
