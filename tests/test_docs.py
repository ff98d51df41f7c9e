"""Every docstring example in the package runs and prints what it claims."""

import doctest
import importlib
import pkgutil

import pytest

import specnorm
import specnorm.all

MODULES = sorted(m.name for m in pkgutil.iter_modules(specnorm.__path__) if not m.name.startswith("_"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"specnorm.{name}")
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder().find(module, globs=dict(vars(specnorm.all))):
        runner.run(test)
    assert runner.failures == 0, f"{runner.failures} docstring examples failed in specnorm.{name}"
