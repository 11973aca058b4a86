"""Starting files that `trackside` writes for a new installation, kept as package data.

`gateway_yaml()` fills `gateway.yaml` (every key commented) with the Kafka address, the folder
for the gateway's state and fresh tokens; `trackside gateway init` writes the result.
"""

from __future__ import annotations

import json
import secrets
from importlib.resources import files
from pathlib import Path
from string import Template

__all__ = ["gateway_yaml"]


def gateway_yaml(bootstrap_servers: str = "127.0.0.1:9092", state_dir: Path | None = None) -> str:
    """The commented starting `gateway.yaml`: Kafka at `bootstrap_servers`; registry, spools
    and TLS files under `state_dir` (left out: beside the file); new random tokens."""
    template = Template(files(__name__).joinpath("gateway.yaml").read_text(encoding="utf-8"))
    state = f"{state_dir.as_posix().rstrip('/')}/" if state_dir is not None else ""
    values = {
        "kafka": bootstrap_servers,
        "state": state,
        "dashboard_token": secrets.token_urlsafe(24),
        "http_token": secrets.token_urlsafe(24),
    }
    return template.substitute({name: _in_quotes(value) for name, value in values.items()})


def _in_quotes(value: str) -> str:
    """`value` escaped for a double-quoted YAML scalar (a JSON string is one)."""
    return json.dumps(value)[1:-1]
