"""The package's layering, read from the source: llmseg_model never imports ROS, and no two of its
modules import each other (directly or around a circle) when they load."""

from __future__ import annotations

import ast
from pathlib import Path

import llmseg_model

PACKAGE = Path(llmseg_model.__file__).parent
ROS_MODULES = ("rclpy", "llmseg_ros", "llmseg_interfaces", "sensor_msgs", "std_msgs", "geometry_msgs", "rosidl_runtime_py")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.Module, everywhere: bool) -> set[str]:
    """Modules a file imports: every import with `everywhere`, else only those run at load time
    (module level, not under `if TYPE_CHECKING:`)."""
    nodes = list(ast.walk(tree)) if everywhere else [n for n in tree.body if not _type_checking_block(n)]
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _type_checking_block(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def load_graph() -> dict[str, set[str]]:
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {
        name: {other for other in imported(ast.parse(path.read_text()), everywhere=False) if other in files and other != name}
        for name, path in files.items()
    }


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import circles, each as the chain of modules that closes it (one per back edge of a depth-first walk)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for other in sorted(graph[name]):
            if state.get(other) == 1:  # back to a module still loading: a circle
                found.append(path[path.index(other) :] + [name, other])
            elif other not in state:
                visit(other, path + [name])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    return found


def test_llmseg_model_never_imports_ros():
    offenders = {
        module_name(path): sorted(n for n in imported(ast.parse(path.read_text()), everywhere=True) if n.split(".")[0] in ROS_MODULES)
        for path in PACKAGE.rglob("*.py")
    }
    assert {name: names for name, names in offenders.items() if names} == {}


def test_no_module_of_llmseg_model_imports_itself_around_a_circle():
    graph = load_graph()
    assert {"llmseg_model.benchmark", "llmseg_model.latency", "llmseg_model.evaluation.stats"} <= set(graph)
    assert circles(graph) == []


def test_circles_are_found_when_there_is_one():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
    assert circles({"a": {"b"}, "b": set()}) == []
