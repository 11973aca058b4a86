"""Over-the-air updates of the device app (docs/ota.md): signed releases and their transfer."""

from gateway import GatewayError

__all__ = ["OtaError"]


class OtaError(GatewayError):
    """A release cannot be built, read or trusted, or an update cannot be delivered."""
