"""What a user's install gets: the wheel holds the runbooks (flows, tasks, incidents,
integrations, deployments) and neither the simulated world nor the developer tooling."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {"flows", "tasks", "incidents", "integrations", "deployments"}


def test_the_wheel_ships_the_runbooks_and_not_the_sandbox_or_the_dev_stack(tmp_path):
    # built from a copy: a build leaves build/ and *.egg-info behind, and the lanes run side by side
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in SHIPPED | {"sandbox", "devstack"}:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                            "--wheel-dir", str(tmp_path), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("incident_runbooks-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {name.split("/")[0] for name in names if "/" in name and ".dist-info/" not in name}
    assert packages == SHIPPED, packages
    # every module of each shipped package is in it, and the entry points a user runs are declared
    for package in SHIPPED:
        here = {str(p.relative_to(ROOT)) for p in (ROOT / package).glob("*.py")}
        assert here <= set(names), sorted(here - set(names))
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    declared = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "runbooks = deployments.cli:main" in declared and "runbooks = deployments.warm_worker" in declared


def test_the_checkout_is_on_the_project_venv_s_path_for_the_sandbox_and_the_dev_stack():
    probe = "import sandbox, devstack, pathlib; print(pathlib.Path(sandbox.__file__).parents[1])"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr[-2000:]
    assert Path(done.stdout.strip()) == ROOT
