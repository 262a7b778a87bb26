"""Builds llsh_index and its native engine (llsh_index._C) with CMake + pybind11.

Environment knobs: LLSH_WITH_CUDA=AUTO|ON|OFF (default AUTO), LLSH_SANITIZE=ON|OFF and
LLSH_DEBUG=ON|OFF (default OFF; 1/0, true/false, yes/no too), CMAKE_BUILD_PARALLEL_LEVEL (default:
number of cores).
"""
import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _switch(name: str) -> bool:
    """An on/off environment knob: unset or empty is off; "0"/"off" must mean off (a plain truth test
    of the string turned LLSH_SANITIZE=0 into a sanitizer build that does not import)."""
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "0", "off", "false", "no"):
        return False
    if value in ("1", "on", "true", "yes"):
        return True
    raise SystemExit(f"{name}: expected ON or OFF (1/0, true/false, yes/no), got {os.environ[name]!r}")


class CMakeExtension(Extension):
    def __init__(self, name: str, source_dir: str = "."):
        super().__init__(name, sources=[])
        self.source_dir = str(Path(source_dir).resolve())


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_temp = Path(self.build_temp) / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        cfg = "Debug" if _switch("LLSH_DEBUG") else "Release"
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}{os.sep}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DLLSH_WITH_CUDA={os.environ.get('LLSH_WITH_CUDA', 'AUTO')}",
            f"-DLLSH_SANITIZE={'ON' if _switch('LLSH_SANITIZE') else 'OFF'}",
        ]
        if os.environ.get("CMAKE_CUDA_ARCHITECTURES"):
            args.append(f"-DCMAKE_CUDA_ARCHITECTURES={os.environ['CMAKE_CUDA_ARCHITECTURES']}")
        try:
            import ninja  # noqa: F401

            args.append("-GNinja")
        except ImportError:
            pass
        env = dict(os.environ)
        env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        subprocess.run(["cmake", ext.source_dir, *args], cwd=build_temp, check=True, env=env)
        subprocess.run(["cmake", "--build", ".", "--config", cfg], cwd=build_temp, check=True, env=env)


setup(
    ext_modules=[CMakeExtension("llsh_index._C")],
    cmdclass={"build_ext": CMakeBuild},
)
