"""The package as colcon builds and installs it: `--symlink-install` keeps the executables runnable,
launch/config are installed without bytecode, the test suite is registered for `colcon test`,
package.xml declares what the code imports, and `ros2 run llmseg_ros train --config config/...`
finds its config in the installed share directory.

The build runs CMake with the ament_cmake wheels of the venv (as scripts/build_interfaces.sh does)
and AMENT_CMAKE_SYMLINK_INSTALL, which is what `colcon build --symlink-install` passes.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ros_helpers import REPO

PREFIX = Path(sys.prefix)

# Python modules that come from pip (requirements*.txt), not from rosdep keys.
PIP_ONLY = {"torch", "torchvision", "transformers", "tokenizers", "peft", "accelerate", "safetensors",
            "segment_anything", "pycocotools", "matplotlib", "openai", "jsonargparse"}
# Python module -> rosdep key for the rest.
ROSDEP_KEYS = {"numpy": "python3-numpy", "PIL": "python3-pil", "cv2": "python3-opencv", "yaml": "python3-yaml",
               "tqdm": "python3-tqdm"}
# Declared though never imported by name: needed at run time all the same.
IMPLIED = {
    "builtin_interfaces": "the stamps in every message",
    "lifecycle_msgs": "rclpy.lifecycle's services",
}
OWN = {"llmseg_ros", "llmseg_model"}


def third_party_imports(folders: list[Path]) -> set[str]:
    """Top-level names imported by the Python files under folders, minus the standard library."""
    names: set[str] = set()
    for folder in folders:
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names.add(node.module.split(".")[0])
    return {name for name in names if name not in sys.stdlib_module_names and name != "__future__"} - OWN


def test_package_xml_declares_what_the_code_imports():
    manifest = ET.parse(REPO / "package.xml").getroot()
    declared = {e.text for e in manifest if e.tag in ("exec_depend", "depend")}
    imports = third_party_imports([REPO / "llmseg_ros", REPO / "launch", REPO / "llmseg_model"])
    needed = {ROSDEP_KEYS.get(name, name) for name in imports - PIP_ONLY}
    assert needed - declared == set(), "imported but not declared in package.xml"
    assert declared - needed - set(IMPLIED) == set(), "declared in package.xml but never imported"
    requirements = (REPO / "requirements.txt").read_text() + (REPO / "requirements-ros.txt").read_text()
    pip_names = {"segment_anything": "segment-anything", "cv2": "opencv-python-headless"}
    for name in (imports & PIP_ONLY) | {"cv2"}:
        assert re.search(rf"^{re.escape(pip_names.get(name, name))}==", requirements, re.M), name
    assert {e.text for e in manifest if e.tag == "test_depend"} >= {"ament_cmake_pytest", "python3-pytest"}


def test_interface_package_declares_its_message_dependencies():
    manifest = ET.parse(REPO / "llmseg_interfaces" / "package.xml").getroot()
    declared = {e.text for e in manifest if e.tag in ("depend", "build_depend")}
    used = set()
    for path in (REPO / "llmseg_interfaces").glob("*/*.*"):
        if path.suffix in (".msg", ".srv", ".action"):
            used |= set(re.findall(r"^\s*([a-z_]+)/[A-Z]", path.read_text(), re.M))
    assert used and used <= declared
    cmake = (REPO / "llmseg_interfaces" / "CMakeLists.txt").read_text()
    files = sorted(str(p.relative_to(REPO / "llmseg_interfaces")) for p in (REPO / "llmseg_interfaces").glob("*/*.*")
                   if p.suffix in (".msg", ".srv", ".action"))
    for name in files:
        assert f'"{name}"' in cmake, f"{name} is not in rosidl_generate_interfaces"


def test_relative_train_config_resolves_against_the_share_directory(tmp_path, monkeypatch):
    from llmseg_ros.train import resolve_config_args

    share = tmp_path / "share" / "llmseg_ros"
    (share / "config").mkdir(parents=True)
    (share / "config" / "train_tiny.yaml").write_text("preset: tiny\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    installed = str(share / "config" / "train_tiny.yaml")
    assert resolve_config_args(["--config", "config/train_tiny.yaml", "--set", "steps=1"], share) == [
        "--config", installed, "--set", "steps=1"]
    assert resolve_config_args(["--config=config/train_tiny.yaml"], share) == [f"--config={installed}"]
    (elsewhere / "config").mkdir()
    (elsewhere / "config" / "train_tiny.yaml").write_text("preset: tiny\n")
    assert resolve_config_args(["--config", "config/train_tiny.yaml"], share) == ["--config", "config/train_tiny.yaml"]
    assert resolve_config_args(["--config", "config/missing.yaml"], share) == ["--config", "config/missing.yaml"]
    assert resolve_config_args(["--config", "config/train_tiny.yaml"], None) == ["--config", "config/train_tiny.yaml"]


def ament_cmake_available() -> bool:
    return shutil.which("cmake") is not None and (PREFIX / "share" / "ament_cmake" / "cmake").is_dir() \
        and (PREFIX / "share" / "ament_cmake_pytest" / "cmake").is_dir()


@pytest.fixture(scope="module")
def symlink_install(tmp_path_factory) -> Path:
    """The package configured, built and installed as `colcon build --symlink-install` does, from a
    copy of the tree whose launch/ holds a stray __pycache__ (as running tests in place leaves)."""
    if not ament_cmake_available():
        pytest.skip(f"cmake or the ament_cmake / ament_cmake_pytest wheels are missing under {PREFIX}")
    root = tmp_path_factory.mktemp("colcon")
    source = root / "src"
    source.mkdir()
    for name in ("CMakeLists.txt", "package.xml", "llmseg_ros", "llmseg_model", "config", "test"):
        (source / name).symlink_to(REPO / name)
    shutil.copytree(REPO / "launch", source / "launch", ignore=shutil.ignore_patterns("__pycache__"))
    (source / "launch" / "__pycache__").mkdir()
    (source / "launch" / "__pycache__" / "segment.launch.cpython-311.pyc").write_bytes(b"stale")
    env = dict(os.environ, AMENT_PREFIX_PATH=str(PREFIX), CMAKE_PREFIX_PATH=str(PREFIX),
               LD_LIBRARY_PATH=f"{PREFIX / 'lib'}:{os.environ.get('LD_LIBRARY_PATH', '')}",
               PATH=f"{PREFIX / 'bin'}:{os.environ['PATH']}")
    build, install = root / "build", root / "install"
    for command in (
        ["cmake", "-S", str(source), "-B", str(build), "-Wno-dev", f"-DCMAKE_INSTALL_PREFIX={install}",
         f"-DPython3_EXECUTABLE={sys.executable}", "-DAMENT_CMAKE_SYMLINK_INSTALL=ON"],
        ["cmake", "--build", str(build)],
        ["cmake", "--install", str(build)],
    ):
        done = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return root


@pytest.mark.timeout(600)
def test_symlink_install_keeps_the_executables_runnable(symlink_install):
    install = symlink_install / "install"
    for name in ("llmseg_node", "train"):
        executable = install / "lib" / "llmseg_ros" / name
        assert executable.is_symlink(), "not a symlink install"
        assert os.access(executable, os.X_OK), f"{name} lost its execute bit"
        assert executable.read_text().startswith(f"#!{sys.executable}\n")
    share = install / "share" / "llmseg_ros"
    assert (share / "launch" / "segment.launch.py").exists()
    assert (share / "config" / "llmseg_node.yaml").exists() and (share / "config" / "train_tiny.yaml").exists()
    assert not (share / "launch" / "__pycache__").exists(), "bytecode from the source tree was installed"
    site = next((install / "lib").glob("python3*/site-packages"))
    assert (site / "llmseg_ros" / "node.py").exists() and (site / "llmseg_model" / "config.py").exists()


@pytest.mark.timeout(600)
def test_the_suite_is_registered_for_colcon_test(symlink_install):
    build = symlink_install / "build"
    listed = subprocess.run(["ctest", "-N"], cwd=build, capture_output=True, text=True, timeout=60)
    assert "llmseg_ros_pytest" in listed.stdout, listed.stdout
    shown = subprocess.run(["ctest", "-N", "-V", "-R", "llmseg_ros_pytest"], cwd=build, capture_output=True,
                           text=True, timeout=60).stdout
    assert "-p no:launch_testing -p no:launch_ros" in shown
    assert "FASTDDS_BUILTIN_TRANSPORTS=SHM" in shown
