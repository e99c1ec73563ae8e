"""The built wheel ships every package, the configs and the recipes, and builds without warnings;
the install is hash-locked and the dependency ranges exclude compromised releases."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
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
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", *isolation, "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
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
    found = subprocess.run(
        [sys.executable, "-c", "import finetune.resources as r; print(r.conf_dir(), r.recipes_dir())"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(unpacked)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
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


# GHSA-w37p-236h-pfx3: these releases of lightning and pytorch-lightning shipped credential-stealing code.
COMPROMISED = {"lightning": ("2.6.2", "2.6.3"), "pytorch-lightning": ("2.6.2", "2.6.3")}
SHA256 = re.compile(r"[0-9a-f]{64}")


def read_pins(path: Path) -> dict[str, tuple[str, list[str]]]:
    """``{canonical name: (pinned version, [sha256, ...])}`` of a pip requirements file of ``name==version`` pins."""
    pins: dict[str, tuple[str, list[str]]] = {}
    for line in path.read_text().replace("\\\n", " ").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *options = (part.strip() for part in re.split(r"\s--", line))
        requirement = Requirement(spec)
        (pin,) = requirement.specifier
        assert pin.operator == "==", f"{path.name}: {line!r} is not an exact pin"
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"{path.name} pins {name} twice"
        pins[name] = (pin.version, [o.removeprefix("hash=sha256:") for o in options if o.startswith("hash=sha256:")])
    return pins


def project_requirements() -> list[Requirement]:
    """Every requirement of pyproject.toml: build system, dependencies and every extra."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    lines = [*config["build-system"]["requires"], *config["project"]["dependencies"]]
    lines += [line for extra in config["project"]["optional-dependencies"].values() for line in extra]
    return [r for r in map(Requirement, lines) if canonicalize_name(r.name) != "finetune"]


def test_lock_hashes_exactly_the_pins_of_constraints():
    lock, constraints = read_pins(REPO / "requirements.lock"), read_pins(REPO / "constraints.txt")
    assert {n: v for n, (v, _) in lock.items()} == {n: v for n, (v, _) in constraints.items()}, "run make lock"
    unhashed = [name for name, (_, hashes) in lock.items() if not hashes]
    assert unhashed == [], f"pins without --hash in requirements.lock: {unhashed}"
    malformed = [(n, h) for n, (_, hashes) in lock.items() for h in hashes if not SHA256.fullmatch(h)]
    assert malformed == []
    assert len(lock["torch"][1]) >= 4, "torch: a wheel's hash for each of Linux x86_64/aarch64 and Python 3.11/3.12"


def test_pins_satisfy_every_requirement_of_pyproject_including_the_build_backend():
    pins = read_pins(REPO / "constraints.txt")
    for requirement in project_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} (pyproject.toml) has no pin in constraints.txt / requirements.lock"
        pinned = pins[name][0]
        assert requirement.specifier.contains(pinned, prereleases=True), f"{name}=={pinned} vs {requirement}"
    assert "setuptools" in pins and "pip" in pins, "the build backend and the installer are locked too"


def test_dependency_ranges_exclude_the_compromised_lightning_releases():
    ranges = {canonicalize_name(r.name): r.specifier for r in project_requirements()}
    pins = read_pins(REPO / "constraints.txt")
    for name, bad_versions in COMPROMISED.items():
        assert name in ranges, f"pyproject.toml must bound {name} (lightning requires it without a version)"
        for bad in bad_versions:
            assert not ranges[name].contains(bad), f"{name}=={bad} (GHSA-w37p-236h-pfx3) is allowed by {ranges[name]}"
        assert ranges[name].contains("2.6.1") and ranges[name].contains("2.6.4"), "only the bad releases are excluded"
        assert pins[name][0] not in bad_versions


def test_make_install_fetches_nothing_without_a_hash(tmp_path):
    """Every pip command of `make install` checks hashes or installs no dependency (the project itself)."""
    for name in ("Makefile", "pyproject.toml", "constraints.txt", "requirements.lock"):
        if (REPO / name).exists():  # a missing one fails `make -n` below
            shutil.copy2(REPO / name, tmp_path / name)
    plan = subprocess.run(["make", "-n", "install"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    installs = [line for line in plan.splitlines() if "pip install" in line]
    assert len(installs) >= 2, plan
    unchecked = [line for line in installs if "--require-hashes" not in line and "--no-deps" not in line]
    assert unchecked == [], f"pip installs that resolve unhashed downloads: {unchecked}"
    assert "requirements.lock" in plan and any("--require-hashes" in line for line in installs), plan
    project = [line for line in installs if line.rstrip().endswith((" -e .", " ."))]
    assert project and all("--no-deps" in line for line in project), plan
