"""The Kafka topic names every part agrees on (docs/architecture.md), in one place."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["Topics"]


class Topics(BaseModel):
    """Every Kafka topic of Trackside; each name can be changed in config."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    telemetry: str = "trackside.telemetry"
    device_status: str = "trackside.device-status"
    operator_actions: str = "trackside.operator-actions"
    alerts: str = "trackside.alerts"
    alert_state: str = "trackside.alert-state"
    maintenance: str = "trackside.maintenance"
    commands: str = "trackside.commands"

    @classmethod
    def with_prefix(cls, prefix: str) -> Topics:
        """The default names with `trackside` replaced by `prefix` (`test-1.telemetry`, ...)."""
        return cls(
            **{
                name: value.replace("trackside.", f"{prefix}.", 1)
                for name, value in cls().model_dump().items()
            }
        )
