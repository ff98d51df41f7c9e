"""The package ships its type hints (PEP 561), and the public API of these modules keeps them.

fastai's `encodes`/`decodes` and plum's `@dispatch` functions are left out: their annotations choose the
types they run on, so they are annotated for dispatch, not for type checkers.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "specnorm"
MODULES = [
    "audio",
    "augment_functional",
    "augment_signal",
    "augment_spectrogram",
    "cache",
    "config",
    "distributed",
    "experiment",
    "loader",
    "preprocess",
    "progress",
    "signal",
    "store",
    "survey",
    "synth",
    "util",
    "views",
]
DISPATCH = {"encodes", "decodes"}
# Arguments left without a hint on purpose: fastai hooks whose argument is whatever fastai passes
# (`before_call`'s batch `b`, `retain`'s arguments and result), the DataLoader's `dataset` and `store` (the
# loader module must not import the store's), and `AudioCache.read`, a type transform whose annotations
# fastai reads.
UNHINTED = {
    ("SpectrogramTransform.before_call", "b"),
    ("CropTime.before_call", "b"),
    ("ResizeSignal.before_call", "b"),
    ("WaveformDL.__init__", "dataset"),
    ("WaveformDL.__init__", "store"),
    ("WaveformDL.__init__", "per_item_tfms"),
    ("WaveformDL.stores", "store"),
    ("WaveformDL.stores", "dataset"),
    ("WaveformDL.new", "dataset"),
    ("WaveformDL.retain", "res"),
    ("WaveformDL.retain", "b"),
    ("WaveformDL.retain", "return"),
    ("AudioCache.read", "return"),
}


def _public_functions(tree):
    "`(qualified name, node)` of every public function and method, constructors included."
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            yield node.name, node
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and (not item.name.startswith("_") or item.name == "__init__"):
                    yield f"{node.name}.{item.name}", item


def _is_dispatch(node):
    return node.name in DISPATCH or any(
        (isinstance(d, ast.Name) and d.id == "dispatch") or (isinstance(d, ast.Attribute) and d.attr == "dispatch")
        for d in node.decorator_list
    )


def _missing(name, node):
    a = node.args
    args = [*a.posonlyargs, *a.args, *a.kwonlyargs]
    if (args and args[0].arg in ("self", "cls")) or name == "AudioCache.read":
        args = args[1:]  # `read`'s first argument is its instance, named `cache` (see its comment)
    missing = [x.arg for x in args if x.annotation is None]
    if node.returns is None and node.name != "__init__":
        missing.append("return")
    return [m for m in missing if (name, m) not in UNHINTED]


@pytest.mark.parametrize("module", MODULES)
def test_public_api_has_type_hints(module):
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    gaps = {name: m for name, node in _public_functions(tree) if not _is_dispatch(node) if (m := _missing(name, node))}
    assert not gaps, f"specnorm/{module}.py: public functions without type hints (name: arguments): {gaps}"


def test_missing_hints_are_found():
    # The check above, on code with and without hints.
    tree = ast.parse(
        "def f(x, y: int = 1): ...\n"
        "def g(x: int) -> int: ...\n"
        "class A:\n"
        "    def __init__(self, n): ...\n"
        "    def encodes(self, x: int): ...\n"
        "    def _private(self, x): ...\n"
    )
    gaps = {name: _missing(name, node) for name, node in _public_functions(tree) if not _is_dispatch(node)}
    assert gaps == {"f": ["x", "return"], "g": [], "A.__init__": ["n"]}


def test_py_typed_is_shipped():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    assert (PACKAGE / "py.typed").is_file()
    config = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["specnorm"]
