"""`python -m gateway` is the `trackside` command."""

from gateway.cli import main

main()
