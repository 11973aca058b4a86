# The two commands of the README: `make demo` and `make test`. Each prepares the machine itself.
.PHONY: setup demo test lint

setup:
	scripts/bootstrap.sh

demo: setup
	.venv/bin/trackside demo

lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy

test: lint
	.venv/bin/pytest
