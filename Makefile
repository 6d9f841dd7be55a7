# ElepHaaS: `make demo` and `make test` do all their own set-up on a fresh Debian 12
# machine as root (apt packages, a virtualenv, requirements, the lab, migrations).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
SERVERS ?= 4
# `make deb` and tests/deploy: Debian's packaging tools, and systemd for systemd-analyze.
DEB_APT_PACKAGES := debhelper dh-virtualenv lintian python3.11-dev python3.11-venv systemd
DEB_DIR := build/deb
APT_PACKAGES := python3 python3-venv python3-dev build-essential libpq-dev libldap2-dev \
	libsasl2-dev postgresql postgresql-contrib openssh-server openssh-client bind9 \
	bind9-utils bind9-dnsutils slapd ldap-utils redis-server rsync util-linux procps \
	chromium chromium-driver $(DEB_APT_PACKAGES) \
	iproute2 nftables

.PHONY: demo test stop system venv lab-up lint bench bench-scale deb

demo: venv
	$(PY) -m lab up --servers $(SERVERS)
	$(PY) -m lab demo

test: venv
	$(PY) -m lab up --servers $(SERVERS)
	rc=0; $(PY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ -z "$${KEEP_LAB:-}" ]; then $(PY) -m lab down || { [ $$rc -ne 0 ] || rc=1; }; fi; \
	exit $$rc

stop:
	$(PY) -m lab down

system:
	@if [ "$$(id -u)" != 0 ]; then echo "make: run as root (apt, namespaces, sshd)"; exit 1; fi
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: requirements.txt requirements-runtime.txt
	/usr/bin/python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@

venv: system $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

bench: venv
	$(PY) -m lab up --servers $(SERVERS)
	for b in bench/bench_*.py; do case $$b in */bench_scale_*) continue;; esac; \
		echo "== $$b"; $(PY) $$b; done

# The scale lab (40 servers, 200 instances, two controllers) beside the default one, its
# benchmarks, and the two that measure any fleet (health sweeps, admin pages); then down.
bench-scale: venv
	$(PY) -m lab up --profile scale
	rc=0; for b in bench/bench_scale_*.py bench/bench_health.py bench/bench_admin_list.py; do \
		echo "== $$b"; LAB_DIR=.lab-scale $(PY) $$b || rc=1; done; \
	LAB_DIR=.lab-scale $(PY) -m lab down; exit $$rc

# The Debian package, built from a copy of what goes into it (tracked and untracked files,
# never git-ignored ones) so that dpkg-buildpackage writes its outputs into $(DEB_DIR)
# rather than next to this folder; rebuilt only when one of them, or the commit, changed.
# The version says which commit: <debian/changelog's>+git<commits>.<hash>.
DEB_INPUTS := $(shell git ls-files --cached --others --exclude-standard -- manage.py elephaas \
	herds instances templates debian requirements-runtime.txt README.md 2>/dev/null)
DEB_VERSION := $(shell sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' debian/changelog)+git$(shell \
	git rev-list --count HEAD 2>/dev/null).$(shell git rev-parse --short HEAD 2>/dev/null)

deb: system $(DEB_DIR)/.built

# Rewritten only when the version changes, so that a new commit rebuilds the package.
build/deb-version: FORCE
	@mkdir -p $(@D)
	@echo '$(DEB_VERSION)' | cmp -s - $@ || echo '$(DEB_VERSION)' > $@

$(DEB_DIR)/.built: $(wildcard $(DEB_INPUTS)) Makefile build/deb-version
	rm -rf $(DEB_DIR)
	mkdir -p $(DEB_DIR)/src
	cp --parents -t $(DEB_DIR)/src $(wildcard $(DEB_INPUTS))
	sed -i "1s/([^)]*)/($(DEB_VERSION))/" $(DEB_DIR)/src/debian/changelog
	cd $(DEB_DIR)/src && dpkg-buildpackage -b -us -uc
	lintian --fail-on error,warning $(DEB_DIR)/*.changes
	ls -l $(DEB_DIR)/*.deb
	touch $@

.PHONY: FORCE
