"""The rich consoles every command prints to, and the log set-up of long-running services."""

import logging

from rich.console import Console

__all__ = ["console", "console_err", "log_for_service"]

console = Console()
console_err = Console(stderr=True)


def log_for_service(verbose: bool = True) -> None:
    """Log lines of a service (systemd's journal keeps them): its own state changes at INFO,
    or only warnings; the libraries' per-connection chatter only when it is a warning."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for chatty in ("amqtt", "transitions"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
