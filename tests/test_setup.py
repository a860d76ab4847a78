"""The Makefile's set-up, as `make -n` shows what it would run."""

import subprocess
import sys
from pathlib import Path

from tests.support import CHECKOUT


def _planned(target: str, python: Path | str, venv: Path) -> str:
    planned = subprocess.run(
        ["make", "--dry-run", target, f"PYTHON={python}", f"VENV={venv}"],
        cwd=CHECKOUT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return planned.stdout


def _environment_of_this_python(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    return venv


def test_another_python_makes_the_environment_again(tmp_path: Path) -> None:
    """`make test PYTHON=python3.13` over a .venv of 3.11 kept using 3.11, saying nothing."""
    venv = _environment_of_this_python(tmp_path)
    newer = tmp_path / "python3.99"
    newer.write_text("#!/bin/sh\necho 3.99\n")
    newer.chmod(0o755)

    planned = _planned("check", newer, venv)

    assert f"{newer} -m venv --clear {venv}" in planned
    assert f"touch {venv}/.installed-python3.99" in planned


def test_an_environment_whose_python_is_gone_is_made_again(tmp_path: Path) -> None:
    """Its python a dangling link (that Python uninstalled): `venv` left it dangling."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(tmp_path / "python3.10-removed")

    planned = _planned("check", sys.executable, venv)

    assert f"{sys.executable} -m venv --clear {venv}" in planned


def test_the_same_python_keeps_the_environment(tmp_path: Path) -> None:
    venv = _environment_of_this_python(tmp_path)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"

    planned = _planned("check", sys.executable, venv)

    [made] = [line for line in planned.splitlines() if " -m venv " in line]
    assert made.split() == [sys.executable, "-m", "venv", str(venv)]  # updated, not cleared
    assert f"touch {venv}/.installed-python{version}" in planned
