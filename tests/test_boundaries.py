"""The house rules, read from the source: which package may import what, and no import circles.

Every import counts, also those inside functions; only `if TYPE_CHECKING:` blocks (annotations) are
left out. See docs/architecture.md for why each rule exists.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"frameprompt": REPO / "backend" / "frameprompt", "frameprompt_blender": REPO / "frameprompt_blender"}
ML = ("torch", "diffusers", "peft", "transformers", "accelerate", "safetensors")
BLENDER = ("bpy", "mathutils", "bmesh", "gpu", "blf", "bpy_extras")


def _module_name(path: Path) -> str:
    for package, root in ROOTS.items():
        if path.is_relative_to(root):
            parts = [package, *path.relative_to(root).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise ValueError(path)


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(path: Path) -> set[str]:
    """Every module `path` imports (absolute names; `from X import y` counts X and X.y)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _is_type_checking_block(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


MODULES = {_module_name(p): _imports(p) for root in ROOTS.values() for p in sorted(root.rglob("*.py"))}


def _offenders(prefix: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad = {}
    for name, imports in MODULES.items():
        if name == prefix or name.startswith(prefix + "."):
            hits = sorted(i for i in imports if any(i == f or i.startswith(f + ".") for f in forbidden))
            if hits:
                bad[name] = hits
    return bad


def test_the_rules_see_both_packages():
    assert "frameprompt.method" in MODULES and "frameprompt_blender.core.keypoints" in MODULES
    assert "torch" in MODULES["frameprompt.method"]  # the reader resolves what it should


def test_the_backend_never_imports_the_blender_side():
    assert _offenders("frameprompt", ("frameprompt_blender.blender", *BLENDER)) == {}


def test_the_add_on_never_imports_torch_or_the_backend():
    assert _offenders("frameprompt_blender", (*ML, "frameprompt")) == {}


def test_the_core_is_pure():
    assert _offenders("frameprompt_blender.core", (*BLENDER, "zmq", "frameprompt_blender.wire")) == {}
    assert _offenders("frameprompt_blender.core", ("frameprompt_blender.blender",)) == {}


def test_only_the_wire_talks_zeromq_in_the_add_on():
    users = _offenders("frameprompt_blender", ("zmq",))
    assert set(users) <= {"frameprompt_blender.wire.client"}, users


def test_the_wire_needs_no_blender():
    assert _offenders("frameprompt_blender.wire", (*BLENDER, "frameprompt_blender.blender")) == {}


@pytest.mark.parametrize("package", sorted(ROOTS))
def test_no_import_circles(package):
    graph = {
        name: {i for i in imports if i in MODULES and i != name and not name.startswith(i + ".")}
        for name, imports in MODULES.items()
        if name.split(".")[0] == package
    }
    # a package's __init__ importing its own modules is not a circle of modules
    graph = {
        n: {i for i in deps if not (n.startswith(i + ".") or i.startswith(n + "."))}
        for n, deps in graph.items()
    }
    circles: list[list[str]] = []
    state: dict[str, int] = {}

    def walk(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                circles.append(trail[trail.index(dep) :] + [dep])
            elif dep not in state:
                walk(dep, [*trail, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node, [node])
    assert circles == [], "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_the_public_api_is_importable_from_the_package_and_lazy():
    code = (
        "import sys, frameprompt; assert 'torch' not in sys.modules; "
        "from frameprompt import FramePromptPipeline, SequenceLayout, load_pipeline; "
        "assert FramePromptPipeline.__name__ == 'FramePromptPipeline' and callable(load_pipeline)"
    )
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
