"""The tree shows the architecture: layers import downwards only, no circles, and the
README's code map names paths that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "consumer"

# A layer may import its own modules and those of the layers listed after it.
LAYERS = ("commands", "devtools", "ops", "runtime", "core", "foundation")
ALLOWED = {layer: set(LAYERS[index:]) for index, layer in enumerate(LAYERS)}
ALLOWED["cli"] = {"cli", *LAYERS}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "foundation"  # consumer/__init__.py
    if parts[1] in ("commands", "devtools", "ops", "runtime", "core"):
        return parts[1]
    return "cli" if parts[1] == "cli" else "foundation"


def _imports() -> dict[str, set[str]]:
    """Each module of the package -> the package's modules it imports at run time."""
    modules = {_module(path): path for path in PACKAGE.rglob("*.py")}
    found: dict[str, set[str]] = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str] = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {
            id(node)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
            for stmt in block.body
            for node in ast.walk(stmt)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only or not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if not (source == "consumer" or source.startswith("consumer.")):
                continue
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                targets.add(candidate if candidate in modules else source)
        found[module] = targets - {module}
    return found


def test_layers_import_downwards_only() -> None:
    wrong = [
        f"{module} ({_layer(module)}) imports {target} ({_layer(target)})"
        for module, targets in _imports().items()
        for target in targets
        if _layer(target) not in ALLOWED[_layer(module)]
    ]
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_circles() -> None:
    graph = _imports()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError(" -> ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            if not (module.startswith(target + ".") or target.startswith(module + ".")):
                visit(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def _code_map_paths() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Code map", 1)[1].split("\n## ", 1)[0]
    paths: list[str] = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        folder = ""
        for item in re.findall(r"`([^`]+)`", line.split(" | ")[0]):
            path = item if "/" in item else folder + item
            folder = path if path.endswith("/") else path.rpartition("/")[0] + "/"
            paths.append(path)
    return paths


def test_every_path_in_the_code_map_exists() -> None:
    paths = _code_map_paths()
    assert len(paths) > 20
    missing = [path for path in paths if not (ROOT / path).exists()]
    assert not missing, missing


def test_every_module_of_the_package_is_in_the_code_map() -> None:
    named = set(_code_map_paths())
    folders = {path for path in named if path.endswith("/")}
    unnamed = [
        str(path.relative_to(ROOT))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "__init__.py"
        and str(path.relative_to(ROOT)) not in named
        and not any(str(path.relative_to(ROOT)).startswith(folder) for folder in folders)
    ]
    assert not unnamed, unnamed
