"""Builds the _epcomm extension with CMake on this checkout and installs it beside the epcomm
package (python/epcomm). Metadata is in pyproject.toml, except the version: that is read from
the project() line of CMakeLists.txt, the one place it is written.

EPCOMM_BUILD_DIR names a build tree to reuse (configured for this checkout, e.g. the GPU check's
Release tree): the module is added to it and only the module is compiled. Otherwise the tree is
build/py-<python tag> (Release, no tests, no bench), compiled with every CUDA kernel when nvcc
is found.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def project_version() -> str:
    text = (ROOT / "CMakeLists.txt").read_text()
    match = re.search(r"^project\(epcomm VERSION ([0-9.]+)", text, re.MULTILINE)
    if match is None:
        raise RuntimeError("no 'project(epcomm VERSION x.y.z' line in CMakeLists.txt")
    return match.group(1)


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        reuse = os.environ.get("EPCOMM_BUILD_DIR")
        build_dir = ROOT / reuse if reuse else ROOT / "build" / f"py-{sys.implementation.cache_tag}"
        configure = ["cmake", "-S", str(ROOT), "-B", str(build_dir), "-DEPCOMM_BUILD_PYTHON=ON",
                     f"-DPython_EXECUTABLE={sys.executable}"]
        if not reuse:
            configure += ["-DCMAKE_BUILD_TYPE=Release", "-DEPCOMM_BUILD_TESTS=OFF",
                          "-DEPCOMM_BUILD_BENCH=OFF", "-DEPCOMM_ENABLE_MPI=OFF"]
            if shutil.which("nvcc") is None and Path("/usr/local/cuda/bin/nvcc").exists():
                configure.append("-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc")
        subprocess.run(configure, check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "--target", ext.name, "-j",
                        str(os.cpu_count() or 2)], check=True)
        built = sorted((build_dir / "python").glob(f"{ext.name}*.so"))
        if not built:
            raise RuntimeError(f"no {ext.name}*.so under {build_dir / 'python'}")
        target = Path(self.get_ext_fullpath(ext.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built[-1], target)


setup(version=project_version(), ext_modules=[CMakeExtension("_epcomm")],
      cmdclass={"build_ext": CMakeBuild})
