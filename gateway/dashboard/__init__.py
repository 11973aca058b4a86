"""The maintenance dashboard: a fleet view built from Kafka, served over HTTP with live updates.

`FleetReader` consumes the telemetry, device status, alert and maintenance topics into a `Fleet`
(the in-memory view model); `create_app` serves it as JSON, Server-Sent Events and a static
page. Operator actions (acknowledge, clear) are produced to the operator-actions topic and
applied by the alert service, so every dashboard shows the same result when it comes back.
"""

from gateway import GatewayError

__all__ = ["DashboardError"]


class DashboardError(GatewayError):
    """The dashboard cannot start or cannot reach Kafka."""
