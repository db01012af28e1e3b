"""The layout of the code, checked from the source (docs/architecture.md describes it).

* Imports between `fmnist` modules only point down the layer table below, and form no cycle. The
  graph is read with `ast` from every import statement, including those inside functions, plus
  module names given as strings (`importlib.import_module("fmnist.x")`, `__import__`).
* No module uses another module's private name: no `from X import _name`, no `X._name` on a
  module or on an object that is not the module's own (`self`, `cls`), in fmnist/, pages/ and
  tests/. KNOWN_PRIVATE (empty) would list, by name, a use left for a later change to remove.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lowest first. A module may import modules of lower layers only (never its own layer or above).
LAYERS: list[tuple[str, set[str]]] = [
    ("leaves: no fmnist imports", {"data", "images", "models", "predictor", "openvino_ir", "console", "child"}),
    ("plain values and pure computations", {"config", "preprocess", "evaluation", "explore", "charts",
                                            "augment", "calibration", "familiarity", "explain"}),
    ("run storage; development inputs through the photo pipeline", {"runs", "devsets"}),
    ("the Keras model of a run", {"keras_backend"}),
    ("Keras in a worker process; OpenVINO export; trust artifacts; feature map; a KServe v2 client",
     {"keras_process", "export", "trust", "featuremap", "remote"}),
    ("predictors by name; training", {"backends", "training"}),
    ("hyperparameter sweeps over training", {"sweep"}),
    ("services the app and CLI call", {"measure", "jobs", "explanations", "serving"}),
    ("benchmark commands", {"bench_train", "bench_infer", "bench_photos", "bench_explain", "bench_serve"}),
    ("the bench command group", {"bench"}),
    ("the command line", {"cli"}),
    ("entry point", {"__main__", "__init__"}),
]
LAYER_OF = {name: i for i, (_, names) in enumerate(LAYERS) for name in names}

# Private names still used across modules, each to be removed by the next change (file, name). Empty:
# keep it so. A test that needs an internal uses a public function or a fixture instead.
KNOWN_PRIVATE: set[tuple[str, str]] = set()


def fmnist_modules() -> dict[str, Path]:
    return {p.stem: p for p in sorted((ROOT / "fmnist").glob("*.py"))}


def _module_name(text: str) -> str | None:
    """'x' for 'fmnist.x' or 'fmnist.x.y'; None for anything else."""
    parts = text.split(".")
    return parts[1] if len(parts) >= 2 and parts[0] == "fmnist" else None


def imports_of(path: Path) -> set[str]:
    """fmnist modules a file imports anywhere in it (top level, functions, string module names)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(filter(None, (_module_name(a.name) for a in node.names)))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "fmnist":  # from fmnist import data as fdata
                found.update(a.name for a in node.names)
            elif _module_name(node.module):
                found.add(_module_name(node.module))
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path.name}: use absolute imports (from fmnist.x import y)")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # a module named in a string is imported dynamically (importlib, __import__)
            name = node.value.strip()
            if _module_name(name) and " " not in name and name.count(".") == 1:
                found.add(_module_name(name))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = fmnist_modules()
    return {name: imports_of(path) & set(modules) - {name} for name, path in modules.items()}


def test_every_module_has_a_layer():
    missing = sorted(set(fmnist_modules()) - set(LAYER_OF))
    assert not missing, f"add these modules to LAYERS (and docs/architecture.md): {missing}"
    stale = sorted(set(LAYER_OF) - set(fmnist_modules()))
    assert not stale, f"LAYERS names modules that no longer exist: {stale}"


def test_imports_only_point_down():
    upward = [f"{a} (layer {LAYER_OF[a]}) imports {b} (layer {LAYER_OF[b]})"
              for a, targets in import_graph().items() for b in sorted(targets)
              if a in LAYER_OF and b in LAYER_OF and LAYER_OF[b] >= LAYER_OF[a]]
    assert not upward, "imports that do not point down the layer table:\n" + "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_graph_sees_function_level_and_string_imports(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text("import os\nfrom fmnist import data as fdata\n"
                      "def f():\n    from fmnist.runs import read_json\n    import fmnist.models\n"
                      "MODULES = ('fmnist.bench_train', 'see fmnist.cli for details')\n")
    assert imports_of(source) == {"data", "runs", "models", "bench_train"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(path: Path) -> set[str]:
    """Names `_x` that a file takes from another module or object: `from X import _x`, `X._x` where X is
    anything but `self`/`cls` or a class defined in the same file. A package's own private module
    (`from pages import _session` inside pages/: Streamlit lists every pages/*.py without a leading
    underscore as a page) is its package's to use."""
    tree = ast.parse(path.read_text(), str(path))
    own_classes = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    own_modules = {p.stem for p in path.parent.glob("_*.py")}
    uses: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            same_package = node.module == path.parent.name
            uses.update(a.name for a in node.names
                        if _is_private(a.name) and not (same_package and a.name in own_modules))
        elif isinstance(node, ast.Attribute) and _is_private(node.attr):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in {"self", "cls"} | own_classes | own_modules:
                continue
            if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
                continue
            uses.add(node.attr)
    return uses


def test_private_check_sees_borrowed_names(tmp_path):
    (tmp_path / "_shared.py").write_text("")
    source = tmp_path / "sample.py"
    source.write_text(f"from fmnist.backends import _Runtime, get_backend\nfrom {tmp_path.name} import _shared\n"
                      "import fmnist.cli as cli\n"
                      "class A:\n    _shared = 1\n    def f(self, job):\n"
                      "        return self._x, A._shared, job._lock, cli._run_or_error, super()._y, self.__dict__, _shared._f\n")
    assert private_uses(source) == {"_Runtime", "_lock", "_run_or_error"}


SCANNED = ("fmnist", "pages", "tests")


@pytest.mark.parametrize("folder", SCANNED)
def test_no_private_names_across_modules(folder):
    found = {(path.relative_to(ROOT).as_posix(), name)
             for path in sorted((ROOT / folder).rglob("*.py")) for name in private_uses(path)}
    new = sorted(found - KNOWN_PRIVATE)
    assert not new, "private names used across modules (make them public or use a public function):\n" + \
        "\n".join(f"{p}: {n}" for p, n in new)


def test_known_private_uses_are_still_there():
    """The allow-list only shrinks: an entry whose use is gone must be deleted from it."""
    found = {(path.relative_to(ROOT).as_posix(), name)
             for folder in SCANNED for path in sorted((ROOT / folder).rglob("*.py")) for name in private_uses(path)}
    assert not KNOWN_PRIVATE - found, f"remove from KNOWN_PRIVATE: {sorted(KNOWN_PRIVATE - found)}"
