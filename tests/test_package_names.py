"""The package's names stay unambiguous: a short path (`jtlens.sparse.x`) imports the real module,
and Python then sets the package's attribute `x` to that module, so a function named like a
sibling module would be replaced by the module as soon as someone imports that module by its
short path (it happened to `jtlens.sparse.dashboard_data`)."""

import importlib
import pkgutil
import types

import jtlens


def _packages():
    yield jtlens
    for info in pkgutil.walk_packages(jtlens.__path__, "jtlens."):
        if info.ispkg:
            yield importlib.import_module(info.name)


def test_no_public_name_is_also_a_submodule():
    clashes = [f"{pkg.__name__}.{sub.name}" for pkg in _packages()
               for sub in pkgutil.iter_modules(pkg.__path__)
               if not isinstance(getattr(pkg, sub.name, None), (types.ModuleType, type(None)))]
    assert not clashes, f"names that are both a function/class and a submodule: {clashes}"


def test_a_short_path_import_leaves_the_exported_function_in_place():
    importlib.import_module("jtlens.sparse.dashboards")
    from jtlens.sparse import dashboard_data

    assert callable(dashboard_data) and not isinstance(dashboard_data, types.ModuleType)
