"""Device tools: list boards, flash MicroPython, deploy the app, serial console, virtual board.

Each tool lives in its own module (`boards`, `flash`, `deploy`, `serial_console`,
`virtual_board`); this module holds the errors they share.
"""

from gateway import GatewayError

__all__ = [
    "DeployError",
    "DeviceToolError",
    "FlashError",
    "PortBusyError",
    "PortNotFoundError",
    "WrongChipError",
]


class DeviceToolError(GatewayError):
    """Root of the device tools' errors."""


class PortNotFoundError(DeviceToolError):
    """The serial port does not exist."""


class PortBusyError(DeviceToolError):
    """Another program holds the serial port."""


class WrongChipError(DeviceToolError):
    """The board or image is not the kind that was asked for."""


class FlashError(DeviceToolError):
    """Putting MicroPython on a board failed."""


class DeployError(DeviceToolError):
    """Copying the app to a board failed."""
