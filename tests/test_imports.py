"""The package's import graph has no cycles, counting imports inside functions (tools/code_shape.py)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("code_shape", ROOT / "tools" / "code_shape.py")
code_shape = importlib.util.module_from_spec(spec)
spec.loader.exec_module(code_shape)


def test_mmseq_has_no_import_cycle():
    assert code_shape.cycles(code_shape.import_graph(ROOT / "mmseq")) == []


def test_a_cycle_through_an_import_inside_a_function_is_found(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from .b import B\n")
    (package / "a.py").write_text("from .sub.b import B\n")
    (package / "sub" / "b.py").write_text("class B:\n    def load(self):\n        from ..c import C\n")
    (package / "c.py").write_text("def f():\n    import pkg.a\n")
    (package / "d.py").write_text("from . import a\n")  # not in the cycle: nothing imports d
    assert code_shape.cycles(code_shape.import_graph(package)) == [["pkg.a", "pkg.c", "pkg.sub", "pkg.sub.b"]]


def test_a_package_imported_by_its_own_modules_is_no_cycle(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from .a import A\n")
    (package / "a.py").write_text("from . import errors\nA = 1\n")
    (package / "errors.py").write_text("")
    assert code_shape.cycles(code_shape.import_graph(package)) == []
