"""The layering rules of docs/architecture.md, checked on the source: which package may import which, and
no import cycles between the project's modules (module-level imports; function-level ones count for the
layering too)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nextgpt", "services", "gateway", "nextgpt_serve")
FORBIDDEN = {
    "nextgpt": ("services", "gateway", "nextgpt_serve"),
    "services": ("gateway", "nextgpt_serve"),
    "gateway": ("nextgpt_serve",),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if "_proto" not in path.parts
    }


def imports(path: Path, *, top_level_only: bool) -> set[str]:
    """Project modules `path` imports (absolute; `from a import b` counts `a` and `a.b`)."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in PACKAGES}


BUILDERS = ("nextgpt.tiny", "nextgpt.training.foundation")
"""Builders of profiles (random tiny weights; the shapes world's trained ones): they may use each other,
the rest of the core never imports them."""


def test_lower_layers_never_import_higher_ones() -> None:
    broken = []
    for module, path in sources().items():
        package = module.split(".")[0]
        for imported in imports(path, top_level_only=False):
            if imported.split(".")[0] in FORBIDDEN.get(package, ()):
                broken.append(f"{module} imports {imported}")
            if (
                package == "nextgpt"
                and not module.startswith(BUILDERS)
                and imported.startswith("nextgpt.tiny.")
            ):
                broken.append(f"{module} imports the tiny builder {imported}")
    assert not broken, "\n".join(broken)


def test_no_private_name_crosses_packages() -> None:
    """`from a.b import _c` only inside `a`'s own top-level package part (e.g. nextgpt.llm for
    nextgpt.llm.x): a private name is free to change, its users must be its neighbours."""
    broken = []
    modules = sources()
    for module, path in modules.items():
        for imported in imports(path, top_level_only=False):
            owner, _, name = imported.rpartition(".")
            private = name.startswith("_") and not name.startswith("__")
            a_module = (ROOT / imported.replace(".", "/")).is_dir() or imported in modules
            if private and not a_module and owner.split(".")[:2] != module.split(".")[:2]:
                broken.append(f"{module} imports {imported}")
    assert not broken, "\n".join(broken)


def test_no_import_cycles() -> None:
    modules = sources()
    graph = {
        module: {name for name in imports(path, top_level_only=True) if name in modules and name != module}
        for module, path in modules.items()
    }
    cycles = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for nxt in sorted(graph[module]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)
