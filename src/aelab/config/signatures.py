"""The arguments a config node's `_target_` takes, read from the installed source, not imported.

A typo in a node (`+trainer.max_epoch=1`, `+optimizer.lrr=1e-3`) should be refused in a second,
before torch loads and before a run dir exists; importing the class to ask `inspect.signature`
would cost the 5-10 s the check is meant to save. So the class's `__init__` is found with `ast` in
the file Python would import it from (following `from x import Name` re-exports and base classes),
and tests compare the result with `inspect.signature` for every class the configs name.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SEARCH_DEPTH = 8  # re-exports and base classes followed before giving up (then: not checked)


@dataclass(frozen=True)
class Arguments:
    names: tuple[str, ...]  # keyword-passable arguments, `self` excluded
    open: bool  # takes **kwargs: any other key is passed on, so none can be called unknown


def arguments_of(target: str) -> Arguments | None:
    """What `target`'s constructor accepts, or None where its source cannot tell (a compiled
    class, a function, a dynamic re-export): such a node's keys are left to the class."""
    module, _, name = target.rpartition(".")
    return _class_arguments(module, name, SEARCH_DEPTH) if module else None


@cache
def _class_arguments(module: str, name: str, depth: int) -> Arguments | None:
    tree = _module_tree(module)
    if tree is None or depth == 0:
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return _own_or_inherited(module, node, tree, depth)
    source = _imported_from(module, name, tree)
    return _class_arguments(*source, depth - 1) if source else None


def _own_or_inherited(module: str, node: ast.ClassDef, tree: ast.Module, depth: int):
    for item in node.body:
        if isinstance(item, ast.FunctionDef) and item.name == "__init__":
            return _signature(item.args)
    if any(isinstance(item, ast.AnnAssign) for item in node.body) and _is_dataclass(node):
        return None  # a dataclass's generated __init__: not read here
    for base in node.bases:  # no __init__ of its own: the first base that has one
        if isinstance(base, ast.Name):
            source = _imported_from(module, base.id, tree) or (module, base.id)
            found = _class_arguments(*source, depth - 1)
            if found is not None:
                return found
    return None


def _signature(args: ast.arguments) -> Arguments:
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    return Arguments(names=tuple(n for n in names[1:] if n != "self"), open=args.kwarg is not None)


def _is_dataclass(node: ast.ClassDef) -> bool:
    return any("dataclass" in ast.unparse(decorator) for decorator in node.decorator_list)


def _imported_from(module: str, name: str, tree: ast.Module) -> tuple[str, str] | None:
    """(module, name) that `from X import Y as name` in `module` binds `name` to."""
    package = module if _is_package(module) else module.rpartition(".")[0]
    for node in tree.body:
        if not isinstance(node, ast.ImportFrom):
            continue
        for alias in node.names:
            if (alias.asname or alias.name) == name:
                source = _absolute(node.module or "", node.level, package)
                return (source, alias.name) if source else None
    return None


def _absolute(module: str, level: int, package: str) -> str:
    if level == 0:
        return module
    base = package.split(".")
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(filter(None, [*base, module]))


@cache
def _module_tree(module: str) -> ast.Module | None:
    path = _source_path(module)
    if path is None:
        return None
    try:
        return ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None


@cache
def _source_path(module: str) -> Path | None:
    """The .py file of `module`, found by walking its package dirs: find_spec on a submodule
    would import its parents (torch, Lightning) first."""
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or (not spec.submodule_search_locations and rest):
        return None
    if not rest:
        return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    for location in spec.submodule_search_locations:
        base = Path(location, *rest)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _is_package(module: str) -> bool:
    path = _source_path(module)
    return path is not None and path.name == "__init__.py"
