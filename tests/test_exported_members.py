"""The package's public surface: `batchrouter.__all__` is sorted and matches what __init__ imports."""

from __future__ import annotations

import ast
from pathlib import Path

import batchrouter


def _imported_public_names() -> set[str]:
    tree = ast.parse(Path(batchrouter.__file__).read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):  # the imports under `if TYPE_CHECKING:` too (the names load lazily)
        if isinstance(node, ast.ImportFrom | ast.Import):
            for alias in node.names:
                name = alias.asname or alias.name.split(".")[0]
                if not name.startswith("_") and name != "annotations":
                    names.add(name)
    return names


def test_all_is_sorted() -> None:
    assert list(batchrouter.__all__) == sorted(batchrouter.__all__)


def test_all_has_no_duplicates() -> None:
    assert len(set(batchrouter.__all__)) == len(batchrouter.__all__)


def test_all_equals_the_public_names_imported_in_init() -> None:
    assert set(batchrouter.__all__) == _imported_public_names()


def test_every_exported_name_is_an_attribute_of_the_package() -> None:
    for name in batchrouter.__all__:
        assert getattr(batchrouter, name) is not None
