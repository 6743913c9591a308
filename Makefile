# The checks a contributor runs, one word each. `.ci/run` runs `make check` and the README's
# test command; everything installs from constraints.txt (the exact versions the suite
# passed with), so a fresh machine gets what CI proved, not today's releases.
PYTHON ?= python
PIP_INSTALL = $(PYTHON) -m pip install -q --disable-pip-version-check
UPGRADE_VENV ?= build/upgrade-venv

.PHONY: install check test demo bench lock upgrade-check publish

install:  ## the project and its dev tools, at the locked versions
	$(PIP_INSTALL) -c constraints.txt -e '.[dev]'

check:  ## lint, format and types (what CI runs before the tests)
	ruff check .
	ruff format --check .
	mypy

test:  ## the README's test command
	pytest

demo:  ## the main job on the embedded PostgreSQL and the simulated providers
	campaignq demo

bench:  ## every benchmark; figures land in bench/out and the README/docs blocks
	$(PYTHON) -m bench

publish:  ## copy the last test run's summaries and screenshots into bench/out and docs/
	$(PYTHON) -m bench.publish

lock:  ## rewrite constraints.txt from a fresh venv with today's releases (run upgrade-check first)
	rm -rf build/lock-venv && $(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	{ sed -n '/^#/p' constraints.txt; build/lock-venv/bin/python -m pip freeze --exclude-editable \
	  | grep -v '^campaignq'; } > constraints.txt.new && mv constraints.txt.new constraints.txt

upgrade-check:  ## the suite on the newest releases, in a venv of its own: what breaks before users meet it
	rm -rf $(UPGRADE_VENV) && $(PYTHON) -m venv $(UPGRADE_VENV)
	$(UPGRADE_VENV)/bin/python -m pip install -q --disable-pip-version-check --upgrade -e '.[dev]'
	$(UPGRADE_VENV)/bin/python -m pip list --outdated --disable-pip-version-check || true
	$(UPGRADE_VENV)/bin/python -m pytest -x -q -p no:cacheprovider
