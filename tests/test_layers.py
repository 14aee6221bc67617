"""Layers point one way (docs/architecture.md): provisioning may use the fleet, the
fleet never imports provisioning, the kiosk firmware imports neither, and the shared
contracts in greengate/ import none of the three. Read from the source, every import
statement, including those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "greengate": {"fleet", "provisioning", "device"},
    "device": {"fleet", "provisioning"},
    "fleet": {"provisioning", "device"},
    "provisioning": {"device"},
}


def imported_packages(path: Path) -> set[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {(node.lineno, alias.name.split(".")[0]) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.lineno, node.module.split(".")[0]))
    return found


def test_the_checker_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from provisioning.pki import PKI\n    import device.x\n")
    assert imported_packages(source) == {(2, "provisioning"), (3, "device")}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(package):
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {name}"
             for path in sorted((ROOT / package).rglob("*.py"))
             for line, name in sorted(imported_packages(path))
             if name in FORBIDDEN[package]]
    assert not wrong, "\n".join(wrong)
