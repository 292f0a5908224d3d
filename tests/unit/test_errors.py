"""One error tree: the drawing in `errors.py` is the class hierarchy, and every public
exception of the package lives there."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

from multiactive import errors

PACKAGE = Path(errors.__file__).parent


def drawn() -> dict[str, str]:
    """{class: parent} as the docstring draws them."""
    tree = (errors.__doc__ or "").split("\n")
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in tree:
        match = re.match(r"^(\s*)(?:[│ ]*)(?:[├└]── )?([A-Z]\w+)\b", line)
        is_root = line.strip() == "MultiactiveError"
        if not match or ("──" not in line and not is_root):
            continue
        name = match.group(2)
        depth = line.index(name)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[name] = stack[-1][1] if stack else ""
        stack.append((depth, name))
    return parents


def defined() -> dict[str, str]:
    """{class: parent} as errors.py defines them."""
    return {
        name: (cls.__bases__[0].__name__ if cls is not errors.MultiactiveError else "")
        for name, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.MultiactiveError)
    }


def test_the_drawing_matches_the_classes() -> None:
    assert drawn() == defined()


def test_every_public_exception_of_the_package_is_defined_in_errors_py() -> None:
    elsewhere = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
                if any(b.endswith(("Error", "Exception")) or b in defined() for b in bases):
                    elsewhere.append(f"{path.relative_to(PACKAGE)}: {node.name}")
    assert elsewhere == []
