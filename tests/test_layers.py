"""The package's import layers read straight: a module imports only from its own layer or below, lazy
imports inside functions included. From the bottom: errors and io; the training loop's core (loop, runs,
snapshots, distributed); data and text; metric functions; CLIP; model families; new words for them (textual
inversion); evaluation (samples
models, hands images to metrics); the launcher; the user interfaces (the CLI and `t2i serve`'s web page)."""

import ast
from pathlib import Path

import t2i

SRC = Path(t2i.__file__).resolve().parent
LAYERS = [
    {"t2i", "errors", "io"},
    {"training"},
    {"data", "text"},
    {"metrics"},
    {"clip"},
    {"models"},
    {"concepts"},
    {"evaluate"},
    {"training.launch"},
    {"cli", "__main__", "serve"},
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    """The dotted name of a file under src/t2i (a package's __init__.py is the package)."""
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(("t2i",) + (parts[:-1] if parts[-1] == "__init__" else parts))


def layer(module: str) -> str:
    """The layer of a dotted module name: its sub-package under t2i (training.launch stands apart)."""
    parts = module.split(".")[1:]
    if parts[:2] == ["training", "launch"]:
        return "training.launch"
    return parts[0] if parts else "t2i"


def imports(path: Path) -> list[tuple[str, int]]:
    """Every t2i module a file imports (anywhere in it), with the line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
    return [(m, line) for m, line in found if m == "t2i" or m.startswith("t2i.")]


def test_every_layer_is_known():
    assert {layer(module_name(f)) for f in SRC.rglob("*.py")} <= set(RANK), "a new sub-package needs its place in LAYERS"


def test_no_module_imports_from_a_layer_above_it():
    upward = []
    for f in SRC.rglob("*.py"):
        module = module_name(f)
        for target, line in imports(f):
            if RANK[layer(target)] > RANK[layer(module)]:
                upward.append(f"{f.relative_to(SRC)}:{line} imports {target}")
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_the_checker_sees_lazy_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from t2i.models import load_pipeline\n    import t2i.cli\n")
    assert imports(f) == [("t2i.models", 2), ("t2i.cli", 3)]
