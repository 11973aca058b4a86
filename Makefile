# The two commands of the README: `make demo` and `make test`. Each prepares the machine itself.
.PHONY: setup demo test lint bench

setup:
	scripts/bootstrap.sh

demo: setup
	.venv/bin/trackside demo

lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy

test: lint
	.venv/bin/pytest

# Benchmarks print a table and write benchmarks/results/<name>.json (see docs/benchmarks.md).
bench:
	scripts/bootstrap.sh --bench
	.venv/bin/python -m benchmarks.bridge
	.venv/bin/python -m benchmarks.embedded
	.venv/bin/python -m benchmarks.alert_latency
	.venv/bin/python -m benchmarks.alerts
	.venv/bin/python -m benchmarks.simulator
	.venv/bin/python -m benchmarks.firmware
	.venv/bin/python -m benchmarks.ota
