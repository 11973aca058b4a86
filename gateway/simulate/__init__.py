"""The simulator harness: simulated trains publishing to an MQTT broker, as the boards do.

Two modes share one `FleetSpec`: the fast mode (`gateway.simulate.fast`) runs thousands of
devices in this process with the firmware's codec and sensor model; the firmware mode
(`gateway.simulate.firmware_mode`) runs the real firmware on the MicroPython unix port, one
process per device. Scenarios are listed in `gateway.simulate.scenarios`. See
docs/simulator.md.
"""

from gateway.simulate.fast import FastFleet, run_fleet
from gateway.simulate.fleet import (
    BrokerAddress,
    DeviceSpec,
    FaultAssignment,
    FleetSpec,
    FleetStats,
    SimulateError,
)
from gateway.simulate.scenarios import SCENARIOS

__all__ = [
    "SCENARIOS",
    "BrokerAddress",
    "DeviceSpec",
    "FastFleet",
    "FaultAssignment",
    "FleetSpec",
    "FleetStats",
    "SimulateError",
    "run_fleet",
]
