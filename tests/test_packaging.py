"""Packaging: what the sdist and the wheel must hold, checked cheaply (no build, no network).

An sdist built without MANIFEST.in held neither CMakeLists.txt nor csrc/, so the wheel built from
it failed at `cmake` ("does not appear to contain CMakeLists.txt"); it also left out
tests/conftest.py and the tests' fixtures. These tests read MANIFEST.in the way setuptools does.
The checks on the checkout skip where there is none (the tests copied next to an installed wheel);
the check on the imported package's data files runs everywhere.
"""
import importlib.resources
import re
from pathlib import Path

import pytest

import llsh_index

ROOT = Path(__file__).resolve().parents[1]

in_checkout = pytest.mark.skipif(not (ROOT / "pyproject.toml").is_file(), reason=f"no checkout (pyproject.toml) at {ROOT}")


def pyproject() -> dict:
    try:
        import tomllib  # novermin  (guarded: tomli below on Python < 3.11)
    except ImportError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs tomllib (3.11+) or tomli")
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def manifest_selection(monkeypatch) -> set:
    """The files MANIFEST.in adds to the sdist (on top of setuptools' defaults), as setuptools reads it."""
    from setuptools.command.egg_info import FileList

    monkeypatch.chdir(ROOT)  # setuptools globs MANIFEST.in's patterns from the current folder
    files = FileList()
    for line in (ROOT / "MANIFEST.in").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            files.process_template_line(line)
    return {Path(f).as_posix() for f in files.files}


def tree(folder: str) -> list:
    return [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / folder).rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts]


@in_checkout
def test_sdist_holds_what_a_wheel_build_and_the_tests_need(monkeypatch):
    chosen = manifest_selection(monkeypatch)
    csrc = tree("csrc")
    assert any(f.endswith(".cu") for f in csrc) and any(f.endswith(".cpp") for f in csrc)
    assert any(f.endswith(".h") for f in csrc)
    needed = ["CMakeLists.txt", "LICENSE", *csrc, "tests/conftest.py", "tests/oracle.py", "tests/fake_device.py",
              *tree("tests/data")]
    # the tests load these benchmark scripts by path (test_table2, test_demo_seeds, test_pyod)
    needed += [f for f in tree("benchmarks") if f.endswith(".py")]
    missing = [f for f in needed if f not in chosen]
    assert not missing, f"MANIFEST.in leaves these out of the sdist: {missing}"
    assert not [f for f in chosen if re.search(r"\.(so|pyd|py[cod])$", f)], "built or byte-compiled files chosen"


@in_checkout
def test_wheel_holds_the_package_only_with_its_data():
    tool = pyproject()["tool"]["setuptools"]
    # tests/ and benchmarks/ stay out of the wheel; the data folder is listed (setuptools warned that it
    # was "absent from the packages configuration" while shipping it through package-data)
    assert tool["packages"] == ["llsh_index", "llsh_index.data"]
    data = tool["package-data"]
    assert data["llsh_index"] == ["py.typed"] and data["llsh_index.data"] == ["*.npz"]
    for package, patterns in data.items():
        for pattern in patterns:
            folder = ROOT.joinpath(*package.split("."))
            assert list(folder.glob(pattern)), f"package-data {package}: {pattern!r} matches no file"


@in_checkout
def test_setup_switches_read_off_as_off():
    """LLSH_SANITIZE=0 built a sanitizer module (any non-empty string was on), which does not import."""
    import ast

    source = (ROOT / "setup.py").read_text()
    node = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "_switch")
    import os

    scope = {"os": os}
    exec(compile(ast.Module(body=[node], type_ignores=[]), "setup.py", "exec"), scope)
    switch = scope["_switch"]
    for value, want in (("", False), ("0", False), ("off", False), ("OFF", False), ("false", False), ("no", False),
                        ("1", True), ("ON", True), ("true", True), ("yes", True)):
        os.environ["LLSH_TEST_SWITCH"] = value
        try:
            assert switch("LLSH_TEST_SWITCH") is want, value
        finally:
            del os.environ["LLSH_TEST_SWITCH"]
    assert switch("LLSH_TEST_SWITCH") is False  # unset
    os.environ["LLSH_TEST_SWITCH"] = "maybe"
    try:
        with pytest.raises(SystemExit, match="LLSH_TEST_SWITCH: expected ON or OFF"):
            switch("LLSH_TEST_SWITCH")
    finally:
        del os.environ["LLSH_TEST_SWITCH"]


def test_imported_package_has_its_data_files():
    """Whatever way it was installed (editable, or a wheel), the package has its marker and demo data."""
    here = importlib.resources.files("llsh_index")
    assert here.joinpath("py.typed").is_file()
    assert here.joinpath("data", "ped2_demo.npz").is_file()
    from llsh_index import _C  # noqa: F401  the native engine was built and installed with it


@in_checkout
def test_version_is_the_same_in_pyproject_and_the_package():
    assert pyproject()["project"]["version"] == llsh_index.__version__


@in_checkout
def test_license_file_matches_the_declared_license():
    project = pyproject()["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Permission is hereby granted, free of charge" in text


@in_checkout
def test_build_requires_a_setuptools_that_reads_the_license_string():
    """`license = "MIT"` (PEP 639) is rejected by setuptools < 77 when it validates [project]."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    reqs = [Requirement(r) for r in pyproject()["build-system"]["requires"]]
    (setuptools,) = [r for r in reqs if r.name == "setuptools"]
    assert not setuptools.specifier.contains(Version("76.1.0"))
    assert setuptools.specifier.contains(Version("77.0.3"))

