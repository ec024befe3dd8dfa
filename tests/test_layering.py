"""The architecture, checked from the source: imports flow one way,
scripts -> applications (regiondrag.apps, regiondrag.dragbench) -> the method (regiondrag's top-level modules)
-> weights -> models, sampling; and the method's settings load without the loader stack."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# layer of each package (a prefix of the module name); a module may import its own layer and those below
LAYERS = {"models": 0, "sampling": 0, "weights": 1, "regiondrag": 2, "regiondrag.apps": 3, "regiondrag.dragbench": 3,
          "regiondrag.__main__": 3,  # `python -m regiondrag`: the CLI's entry point
          "scripts": 4}
OURS = ("models", "sampling", "weights", "regiondrag", "scripts")


def layer_of(module: str) -> tuple[str, int]:
    """The longest LAYERS prefix of a dotted module name, and its layer."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS:
            return prefix, LAYERS[prefix]
    raise KeyError(module)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, function-level ones included."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):  # each name as module.name: it may be a submodule
            target = node.module
            if node.level:  # relative: resolve against the package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


def sources() -> list[Path]:
    return sorted(p for top in OURS for p in (ROOT / top).rglob("*.py"))


def test_the_layering_rule_itself_catches_an_upward_import(tmp_path):
    """The checker on a planted violation (the method importing the CLI), so a broken checker cannot pass."""
    assert layer_of("regiondrag.pipeline") == ("regiondrag", 2)
    assert layer_of("regiondrag.apps.cli") == ("regiondrag.apps", 3)
    assert layer_of("weights.hub") == ("weights", 1)
    planted = ROOT / "regiondrag" / "_planted_for_test.py"
    try:
        planted.write_text("def f():\n    from .apps import cli\n")
        assert violations([planted]) == [f"regiondrag/_planted_for_test.py:2 (regiondrag) imports regiondrag.apps.cli "
                                         f"(regiondrag.apps)"]
    finally:
        planted.unlink()


def violations(paths: list[Path]) -> list[str]:
    found = []
    for path in paths:
        own, level = layer_of(module_name(path))
        for line, target in imported_modules(path):
            if target.split(".")[0] not in OURS:
                continue
            other, other_level = layer_of(target)
            same_layer_sibling = other_level == level and own.split(".")[0] != other.split(".")[0]
            if other != own and (other_level > level or same_layer_sibling):
                found.append(f"{path.relative_to(ROOT)}:{line} ({own}) imports {target} ({other})")
    return found


def test_imports_flow_one_way():
    assert sources(), "no sources found"
    assert violations(sources()) == []


@pytest.mark.parametrize("module", ["regiondrag.config", "regiondrag.regions", "regiondrag.mapping"])
def test_the_method_settings_import_without_the_loader_stack(module):
    code = (f"import sys, {module}; heavy = sorted({{m.split('.')[0] for m in sys.modules}} & "
            f"{{'transformers', 'gradio', 'huggingface_hub', 'diffusers'}}); print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing {module} loaded {out.strip()}"


def test_the_package_metadata_points_at_modules_that_exist():
    """setup.cfg reads the version from a module by name; a layout change that moves that module breaks
    `pip install -e .` on a fresh machine while an old editable install here keeps working."""
    import configparser
    import importlib

    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    attr = setup["metadata"]["version"].removeprefix("attr:").strip()
    module, _, name = attr.rpartition(".")
    assert (ROOT / Path(*module.split("."))).with_suffix(".py").is_file(), f"setup.cfg names {module}, not a file"
    assert isinstance(getattr(importlib.import_module(module), name), str)
