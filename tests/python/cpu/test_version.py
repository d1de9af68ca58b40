"""epcomm.__version__ is the C++ library's version, which CMake takes from the project() line of
CMakeLists.txt: the one place the version is written."""
import re
from pathlib import Path

import _epcomm
import epcomm

CMAKE_LISTS = Path(__file__).resolve().parents[3] / "CMakeLists.txt"


def test_version_is_the_cmake_project_version():
    match = re.search(r"^project\(epcomm VERSION (\d+)\.(\d+)\.(\d+)", CMAKE_LISTS.read_text(),
                      re.MULTILINE)
    assert match is not None, f"no project(epcomm VERSION x.y.z) in {CMAKE_LISTS}"
    assert epcomm.__version__ == ".".join(match.groups())
    assert _epcomm.__version__ == epcomm.__version__
