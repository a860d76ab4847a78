"""The project's own Python source, read as Python versions after 3.11 read it."""

import ast

from tests.support import CHECKOUT

_BENCH = CHECKOUT / "bench"  # its own files, not the peers' virtual environment in it
_DEFINITIONS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def test_every_docstring_is_unicode_text() -> None:
    """Python 3.13 compiles docstrings through UTF-8: one holding a lone surrogate (an escape
    such as \\ud800 in a docstring that is not raw) stopped its module from importing there."""
    unencodable = []
    sources = [CHECKOUT / folder for folder in ("src", "tests", "migrations")]
    paths = [*(path for folder in sources for path in folder.rglob("*.py")), *_BENCH.glob("*.py")]
    for path in sorted(paths):
        for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
            docstring = (
                ast.get_docstring(node, clean=False) if isinstance(node, _DEFINITIONS) else None
            )
            try:
                (docstring or "").encode()
            except UnicodeEncodeError:
                line = getattr(node, "lineno", 1)
                unencodable.append(f"{path.relative_to(CHECKOUT)}:{line}")
    assert unencodable == []
