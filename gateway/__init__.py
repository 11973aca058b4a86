"""Trackside gateway: the Pi runtime, its CLI, alerting, dashboard and device tools."""

__all__ = ["GatewayError"]


class GatewayError(Exception):
    """Root of every error the gateway raises; the message says what to do next."""
