"""The rich consoles every command prints to."""

from rich.console import Console

__all__ = ["console", "console_err"]

console = Console()
console_err = Console(stderr=True)
