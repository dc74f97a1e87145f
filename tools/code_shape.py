"""The shape of the package: files per folder, the largest classes and functions, import cycles.

    python tools/code_shape.py [--top 10] [PACKAGE_DIR]

Line counts come from the syntax tree (``end_lineno - lineno + 1``, docstrings included).
Imports inside functions count as edges of the import graph.
"""
import argparse
import ast
import sys
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.AST, name: str, is_package: bool, known: set[str]) -> set[str]:
    """Every module of the package that ``name`` imports, at any depth of its syntax tree."""
    found = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    known = set(files)
    return {name: imported_modules(ast.parse(path.read_text()), name, path.name == "__init__.py", known)
            for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    def parents(name):
        return {name.rsplit(".", k)[0] for k in range(1, name.count(".") + 1)}

    # Importing a.b.c runs a/__init__ and a/b/__init__ first: those are edges too, but for the
    # packages that hold the importer itself (Python has them loaded already).
    edges = {a: {p for b in bs for p in parents(b) | {b} if p in graph} - parents(a) - {a}
             for a, bs in graph.items()}
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


def sizes(root: Path):
    """(lines, kind, qualified name) of every class and function."""
    out = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        name = module_name(path, root)

        def walk(node, prefix):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    kind = "class" if isinstance(child, ast.ClassDef) else "def"
                    qual = f"{prefix}.{child.name}"
                    out.append((child.end_lineno - child.lineno + 1, kind, qual))
                    walk(child, qual)

        walk(tree, name)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", nargs="?", default=str(Path(__file__).resolve().parents[1] / "mmseq"))
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args(argv)
    root = Path(args.package).resolve()
    print(f"{root.name}/")
    top_files = sorted(p.name for p in root.glob("*.py"))
    print(f"  {len(top_files)} .py files: {' '.join(top_files)}")
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        names = sorted(str(p.relative_to(sub)) for p in sub.rglob("*.py"))
        print(f"  {sub.name}/ {' '.join(names)}")
    total = sum(len(p.read_text().splitlines()) for p in root.rglob("*.py"))
    print(f"  {total} lines")
    items = sorted(sizes(root), reverse=True)
    for kind in ("class", "def"):
        print(f"largest {'classes' if kind == 'class' else 'functions'}:")
        for lines, k, qual in [i for i in items if i[1] == kind][: args.top]:
            print(f"  {lines:5d}  {qual}")
    found = cycles(import_graph(root))
    print(f"import cycles: {len(found)}")
    for component in found:
        print("  " + " <-> ".join(component))


if __name__ == "__main__":
    main()
