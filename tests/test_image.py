"""The container image: the Dockerfile lints clean and keeps its promises (multi-stage, pinned
installs, non-root, no compilers in the final stage); and, where `make image` has built it on
this machine, the image's intake answers /healthz and starts a sandbox runbook from an alert,
with the rest of the stack outside the container (the run itself is the test server's; that it
then reaches its approval is covered by tests/test_intake.py and tests/test_ui.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from integrations import http
from tests.test_intake import deployments  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
IMAGE = os.environ.get("RUNBOOKS_IMAGE", "incident-runbooks:dev")


def test_the_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dockerfile_builds_in_two_stages_pinned_and_runs_as_a_user():
    text = DOCKERFILE.read_text()
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert len(stages) == 2 and stages[0].endswith(" AS build"), stages
    final = text[text.rindex(stages[1] + "\n"):]
    assert "--constraint constraints.txt" in text and (ROOT / "constraints.txt").exists()
    assert "USER 10001" in final and "pip install" not in final
    assert not any(word in final for word in ("gcc", "build-essential", "apt-get install")), "no compilers at run time"
    pinned = {line.split("==")[0].lower() for line in (ROOT / "constraints.txt").read_text().splitlines()
              if "==" in line}
    assert {"prefect", "httpx", "kubernetes", "psycopg", "redis"} <= pinned


def _engine() -> str | None:
    podman = shutil.which("podman")
    if podman is None:
        return None
    found = subprocess.run([podman, "--storage-driver", "vfs", "image", "exists", IMAGE], timeout=60)
    return podman if found.returncode == 0 else None


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.skipif(_engine() is None, reason=f"no image {IMAGE} built here (`make image`)")
def test_the_image_serves_the_intake_and_starts_a_runbook_from_an_alert(world, deployments):  # noqa: F811
    """The intake in the container, on the host's network: it answers /healthz, takes an alert
    and starts its run on the test server."""
    from prefect.settings import PREFECT_API_URL

    from tests.conftest import break_api
    from tests.test_intake import REDIS_URL, TOKEN, _alert, _am_payload, _clean, _runs

    _clean(deployments)
    break_api(world)
    port = 18787
    # runc with cgroupfs and limits no higher than this host's: what runs on a host that gives a
    # container no cgroup v2 of its own and no CAP_SYS_RESOURCE (crun refuses both)
    runtime = ["--runtime", "runc"] if shutil.which("runc") else []
    container = subprocess.Popen(
        [_engine(), "--storage-driver", "vfs", *runtime, "--cgroup-manager", "cgroupfs", "run", "--rm",
         "--network", "host", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096",
         # as the manifests run it: read-only root, writable /tmp and Prefect's home only
         "--read-only", "--tmpfs", "/tmp", "--tmpfs", "/home/runbooks/.prefect",
         # the test config's ${RUNBOOKS_...} references and secrets, as the pod's env would hold them
         *[arg for name in os.environ if name.startswith("RUNBOOKS_") and name != "RUNBOOKS_CONFIG"
          for arg in ("-e", name)],
         "-e", f"PREFECT_API_URL={PREFECT_API_URL.value()}", "-e", f"RUNBOOKS_ALERT_TOKEN={TOKEN}",
         "-e", f"RUNBOOKS_REDIS_URL={REDIS_URL}",
         "-v", f"{os.environ['RUNBOOKS_CONFIG']}:/etc/runbooks/config.yaml:ro",
         IMAGE, "intake", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120  # a vfs copy of the image's filesystem comes first
        while time.monotonic() < deadline:
            try:
                if http.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
            if container.poll() is not None:
                pytest.fail(f"the intake in the image exited: {container.stdout.read()[-2000:]}")
        else:
            pytest.fail("the intake in the image did not answer /healthz within 120 s")
        answer = http.post(f"http://127.0.0.1:{port}/alerts/alertmanager", json=_am_payload(_alert("image-1")),
                           headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert len(_runs(deployments["service-down"])) == 1
    finally:
        container.terminate()
        container.wait(timeout=30)
