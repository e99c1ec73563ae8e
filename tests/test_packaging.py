"""The built wheel ships every package, the configs and the recipes, and builds without warnings."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "finetune", "conf", "recipes")
PROBE = "finetune/_probe_new_subpackage"  # added to the copy only: a package nobody listed anywhere


def build_requirements_installed() -> bool:
    """True when this environment already satisfies ``[build-system].requires`` (then build offline)."""
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    for line in requires:
        requirement = Requirement(line)
        try:
            if not requirement.specifier.contains(version(requirement.name), prereleases=True):
                return False
        except PackageNotFoundError:
            return False
    return True


def build_wheel(tmp_path: Path) -> tuple[Path, str, Path]:
    """Copy the sources to ``tmp_path`` (no stale ``build/``), add a probe package, build one wheel."""
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)
    (src / PROBE / "inner").mkdir(parents=True)
    (src / PROBE / "__init__.py").write_text("")
    (src / PROBE / "inner" / "__init__.py").write_text("")
    isolation = ["--no-build-isolation"] if build_requirements_installed() else []
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", *isolation,
                          "-w", str(tmp_path / "dist"), str(src)],
                         capture_output=True, text=True, timeout=600)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    (wheel,) = (tmp_path / "dist").glob("finetune-*.whl")
    return wheel, log, src


def test_wheel_ships_every_package_the_configs_and_the_recipes_without_warnings(tmp_path):
    wheel, log, src = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())

    sources = {p.relative_to(src).as_posix() for p in (src / "finetune").rglob("*") if p.is_file()}
    packages = {p.parent.relative_to(src).as_posix() for p in (src / "finetune").rglob("__init__.py")}
    assert PROBE in packages and f"{PROBE}/inner" in packages
    assert {f"{p}/__init__.py" for p in packages} <= names, "a package is missing from the wheel"
    assert sources - names == set(), "a file of finetune/ is missing from the wheel (data: see package-data)"
    shipped = {n for n in names if n.startswith("finetune/") and n.endswith(".py")}
    assert shipped - {"finetune/conf/__init__.py", "finetune/recipes/__init__.py"} <= sources, "stale module"

    assert "finetune/conf/config.yaml" in names
    for folder in ("conf", "recipes"):
        data = {p.relative_to(src).as_posix() for p in (src / folder).rglob("*") if p.is_file()}
        assert {f"finetune/{d}" for d in data} <= names, f"{folder}/ is not fully shipped"
    assert any(n.startswith("finetune/recipes/") and n.endswith(".yaml") for n in names)

    unpacked = tmp_path / "unpacked"  # the installed layout: finetune.resources finds conf/ and recipes/
    zipfile.ZipFile(wheel).extractall(unpacked)
    found = subprocess.run([sys.executable, "-c", "import finetune.resources as r; print(r.conf_dir(), r.recipes_dir())"],
                           cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(unpacked)},
                           capture_output=True, text=True, check=True).stdout.split()
    assert [Path(p).resolve() for p in found] == [(unpacked / "finetune" / d).resolve() for d in ("conf", "recipes")]
    assert (unpacked / "finetune" / "conf" / "config.yaml").is_file()

    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    metadata = zipfile.ZipFile(wheel).read(meta).decode()
    assert "License-Expression: Apache-2.0" in metadata
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "finetune = finetune.cli:main" in entry_points  # the `finetune` console command

    assert "deprecat" not in log.lower(), log[-4000:]
    assert not re.findall(r"[A-Za-z]+Warning\b", log), re.findall(r".*[A-Za-z]+Warning\b.*", log)
