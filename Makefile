# The two commands of the README. Both install what is missing first.
.PHONY: demo test setup image lint bench clean-test-vms

setup:
	@scripts/setup-host.sh

image: setup
	@.venv/bin/dockvisor image build

demo: image
	@scripts/demo.sh

test: image
	.venv/bin/ruff check src tests bench
	.venv/bin/ruff format --check src tests bench
	.venv/bin/mypy
	.venv/bin/pytest

lint: setup
	.venv/bin/ruff check src tests bench && .venv/bin/mypy

bench: image
	.venv/bin/python bench/lifecycle.py
	.venv/bin/python bench/docker.py
	.venv/bin/python bench/catalog.py
	.venv/bin/python bench/warm.py

# Remove VMs a crashed test run may have left (their names start with dvt-).
clean-test-vms: setup
	.venv/bin/python -m tests.cleanup
