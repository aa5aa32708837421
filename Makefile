# containerd-deploy: `make demo` (a local node, deployed and checked) and `make test` (the suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Debian packages the local test nodes need: qemu (TCG), mmdebstrap for the image, busybox for
# the conformance test image, an SSH client; for the test registry (Debian's docker-registry,
# run from its .deb): openssl for its CA, htpasswd for its users, skopeo to push images; for the
# arm64 node: qemu-system-arm (qemu-system-aarch64), qemu-user-static + binfmt-support to build its
# image, kmod (depmod) and cpio for its kernel modules and initrd, made on this machine.
APT_PACKAGES := qemu-system-x86 qemu-utils mmdebstrap gpg libdpkg-perl arch-test mount busybox-static openssh-client curl e2fsprogs ca-certificates debian-archive-keyring openssl apache2-utils skopeo shellcheck qemu-system-arm qemu-user-static binfmt-support kmod cpio systemd-container
DEMO_NODE := demo

.PHONY: deps demo lint test check unit e2e mutation bench bench-fanout down clean

deps: $(VENV)/.installed
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

# The pinned dependencies, then this tree in editable mode: `containerd_deploy` imports from
# tasks/containerd_deploy, and `python -m containerd_deploy.…` works as from an installed package.
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# Boot a throw-away node (qemu VM on 127.0.0.1) whose registries go through a local TLS mirror
# with auth, deploy it, run the conformance suite (pulling nginx through the mirror and serving
# it from a pod), then the install guide's own nginx commands on the node.
demo: deps
	$(PY) -m tests.harness up --registry $(DEMO_NODE)
	$(PY) -m pyinfra inventories/local.py deploy.py -y --limit $(DEMO_NODE)
	$(PY) -m containerd_deploy.conformance --hosts=ssh://$(DEMO_NODE) --ssh-config=.nodes/ssh_config -v \
	  --pull-image=docker.io/library/nginx:alpine --serve-port=80
	$(PY) -m tests.harness guide-nginx $(DEMO_NODE)
	@echo "the node keeps running: ssh -F .nodes/ssh_config $(DEMO_NODE); stop it with: make down"

PY_TREES := deploy.py tasks tests bench inventories group_data
lint: deps
	$(VENV)/bin/ruff check $(PY_TREES)
	$(VENV)/bin/ruff format --check $(PY_TREES)
	$(VENV)/bin/mypy

# The unit tests once more without root (a user namespace where this user is nobody):
# developers run them so.
UNPRIVILEGED := unshare --user

# Lint and unit tests first (they fail before any node boots), then the e2e tests: the deploy's
# logic on systemd-nspawn machines (three node generations: Debian 12 + containerd 1.6, Debian 13
# + 1.7, Debian 13 + 2.1; lifecycle, runs cut short, refusals, rollout, sudo, @local, registries),
# and on qemu VMs what a kernel of the node's own decides (each generation's full CRI
# conformance, cgroup v1, the mixed amd64/arm64 fleet, supply chain). Each xdist group boots its
# node once; groups go to workers in collection order (tests/e2e/conftest.py puts the longest
# first). pytest ends with each group's time. Between them, the mutation stage: a few minutes of
# the decision modules' mutants against the unit tests (tests/mutation.py sample).
test: deps lint
	@# The mutation stage runs its tests in one process for minutes: the unit tests (as root, then
	@# without) run beside it, one process too.
	$(PY) -m tests.mutation sample & sample=$$!; \
	$(PY) -m pytest -p no:cacheprovider -q tests/unit && \
	$(UNPRIVILEGED) $(PY) -m pytest -p no:cacheprovider -q tests/unit; unit=$$?; \
	wait $$sample; sampled=$$?; test $$unit = 0 && test $$sampled = 0
	$(PY) -m pytest -p no:cacheprovider -v --durations=60 -n 3 --dist loadgroup --no-loadscope-reorder tests/e2e

# The inner loop (minutes): lint, types, the unit tests (as root; `make test` runs them without
# root too) and the e2e tests on machines, no VM.
check: deps lint
	$(PY) -m pytest -p no:cacheprovider -q -n 2 tests/unit
	$(PY) -m pytest -p no:cacheprovider -v -n 3 --dist loadgroup --no-loadscope-reorder --node-kind machine tests/e2e

unit: deps lint
	$(PY) -m pytest -p no:cacheprovider tests/unit

e2e: deps
	$(PY) -m pytest -p no:cacheprovider -v -n 3 --dist loadgroup --no-loadscope-reorder tests/e2e

# Mutation testing: every mutant of the package against the unit tests alone (in .mutation/,
# incremental: a rerun checks only what changed), then the kill rate per module into
# docs/mutation.md and the baseline of `make test`'s sample into tests/mutation_baseline.json;
# fails when a decision module is below its floor (tests/mutation.py). Half an hour or more
# here; `make test` runs a time-boxed sample.
mutation: deps
	$(PY) -m tests.mutation run
	$(PY) -m tests.mutation recheck
	$(PY) -m tests.mutation report

# First converge vs a hand-written script, no-op rerun (and against `pyinfra … exec -- true`),
# fan-out, upstream bytes, controller memory, on local VMs; then the controller at fleet scale
# (bench-fanout). Writes docs/benchmarks.md. Not part of `make test` (nothing is timed there).
bench: deps
	$(PY) -m bench
	$(PY) -m bench.fanout

# The controller at 1, 8, 32 and 64 nodes (systemd-nspawn machines: needs systemd-container);
# writes its own section of docs/benchmarks.md.
bench-fanout: deps
	$(PY) -m bench.fanout

down:
	$(PY) -m tests.harness down

clean: down
	rm -rf $(VENV) .nodes .mutation mutants build tasks/*.egg-info
