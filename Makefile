# ElepHaaS: `make demo` and `make test` do all their own set-up on a fresh Debian 12
# machine as root (apt packages, a virtualenv, requirements, the lab, migrations).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
SERVERS ?= 4
APT_PACKAGES := python3 python3-venv python3-dev build-essential libpq-dev libldap2-dev \
	libsasl2-dev postgresql postgresql-contrib openssh-server openssh-client bind9 \
	bind9-utils bind9-dnsutils slapd ldap-utils redis-server rsync util-linux procps \
	chromium chromium-driver

.PHONY: demo test stop system venv lab-up lint bench

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

$(VENV)/.installed: requirements.txt
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
	for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b; done
