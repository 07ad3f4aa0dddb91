# `make up` and `make test` are all the set-up there is: each creates the virtual
# environment first when it is missing (or when pyproject.toml changed) and installs the
# Debian packages it uses when they are missing (scripts/debian-packages.sh).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: up down test test-reversed unit lint bench sandbox venv clean packages image constraints

$(STAMP): pyproject.toml
	@echo "Creating the virtual environment in $(VENV) (first run only)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip 2>&1 | grep -v "is ignored" || true
	@$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]' 2>&1 | grep -v "is ignored" || true
	@# the sandbox and the dev stack are not in the package: the checkout itself is on the venv's path
	@$(PY) -c "import pathlib, sysconfig; pathlib.Path(sysconfig.get_path('purelib'), 'incident-runbooks-checkout.pth').write_text(str(pathlib.Path.cwd()) + '\n')"
	@$(PY) -c "import prefect, kubernetes, psycopg, redis, httpx" || (echo "dependency install failed"; exit 1)
	@touch $(STAMP)

venv: $(STAMP)

# `make up HA=1`: the scale-out stack (devstack/ha.py)
up: $(STAMP)
	@bash scripts/debian-packages.sh up
	@$(PY) -m devstack.stack up $(if $(HA),--ha)

down:
	@if [ -x $(PY) ]; then $(PY) -m devstack.stack down; else echo "nothing to stop"; fi

# the whole suite in parallel lanes (tests/lanes.py; LANES=1 for one pytest session, as
# `$(PY) -m pytest` runs it); ARGS are passed to every lane's pytest
LANES ?= 3
test: $(STAMP)
	@bash scripts/debian-packages.sh test
	$(PY) -m tests.lanes --lanes $(LANES) $(if $(ARGS),-- $(ARGS))

# the same suite with each lane's modules in reverse order: tests must not depend on their order
test-reversed: $(STAMP)
	@bash scripts/debian-packages.sh test
	$(PY) -m tests.lanes --lanes $(LANES) --reverse $(if $(ARGS),-- $(ARGS))

unit: $(STAMP)
	$(PY) -m pytest -m unit -q

# ruff (style, import order, bugbear) and mypy (strict on incidents/ and integrations/), as
# configured in pyproject.toml; .ci/run runs it before the tests.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) benchmarks/diagnosis_fanout.py
	$(PY) benchmarks/alert_intake.py
	$(PY) benchmarks/engine_latency.py
	$(PY) benchmarks/outage_replay.py
	$(PY) benchmarks/judgement.py
	$(PY) benchmarks/slack_interactions.py

# the container image (Dockerfile) with podman or buildah; IMAGE=name:tag to name it
image:
	@bash scripts/build-image.sh

# the versions the image installs: those of the virtual environment the tests passed with
constraints: $(STAMP)
	@{ echo "# Pinned versions for the image (Dockerfile: pip install --constraint). The virtual environment"; \
	   echo "# that \`make test\` passed with; \`make constraints\` writes it again."; \
	   $(PY) -m pip freeze --exclude-editable --disable-pip-version-check; } > constraints.txt

sandbox: $(STAMP)
	$(PY) -m sandbox

clean:
	-@if [ -x $(PY) ]; then $(PY) -m devstack.stack clean; fi
	rm -rf $(VENV) .prefect .sandbox .run
