# Trackside wire format v1: one sensor reading in at most 32 bytes.
# Runs unchanged on CPython and MicroPython; the bridge imports this very file.
# Specified byte by byte in docs/wire-format.md.
import struct

VERSION = 1
FLAG_WALL_CLOCK = 1  # timestamp is UTC ms since the Unix epoch, else ms since boot

# Channel table, indexed by channel id (= bit in the channel mask). New channels are only
# ever appended, so an older decoder stops at the first id it does not know.
# (name, struct code, scale: the integer on the wire is value * scale)
CHANNELS = (
    ("engine_temp", "h", 10),  # degC, 0.1 steps
    ("bearing_left_temp", "h", 10),  # degC, 0.1 steps
    ("bearing_right_temp", "h", 10),  # degC, 0.1 steps
    ("vibration_rms", "H", 1000),  # g, 0.001 steps
    ("speed", "H", 10),  # km/h, 0.1 steps
    ("supply_voltage", "H", 1000),  # V, 0.001 steps
    ("ambient_temp", "h", 10),  # degC, 0.1 steps
)
CHANNEL_IDS = {c[0]: i for i, c in enumerate(CHANNELS)}

HEADER = ">BBIHIHIH"  # version, flags, device id, boot id, seq, ts high 16, ts low 32, mask
HEADER_SIZE = 20
MAX_FRAME = 64
MAX_TIMESTAMP = (1 << 48) - 1


class WireError(ValueError):
    """The one error raised for a frame that cannot be encoded or decoded."""


def encode(device_id, boot_id, seq, timestamp_ms, values, flags=FLAG_WALL_CLOCK):
    """Encode one reading; values maps channel names to scaled integers."""
    _check(device_id, 0xFFFFFFFF, "device_id")
    _check(boot_id, 0xFFFF, "boot_id")
    _check(seq, 0xFFFFFFFF, "seq")
    _check(timestamp_ms, MAX_TIMESTAMP, "timestamp_ms")
    _check(flags, 0xFF, "flags")
    mask = 0
    for name in values:
        i = CHANNEL_IDS.get(name)
        if i is None:
            raise WireError("unknown channel " + str(name))
        mask |= 1 << i
    frame = bytearray(HEADER_SIZE + 2 * len(values))
    struct.pack_into(
        HEADER, frame, 0, VERSION, flags, device_id, boot_id, seq,
        timestamp_ms >> 32, timestamp_ms & 0xFFFFFFFF, mask,
    )
    pos = HEADER_SIZE
    for name, code, _ in CHANNELS:  # in channel id order, as the mask says
        if name in values:
            v = values[name]
            lo = -32768 if code == "h" else 0
            # Checked first: the bytes below would wrap an out-of-range number silently.
            if not isinstance(v, int) or v < lo or v > lo + 0xFFFF:
                raise WireError("channel %s out of range: %r" % (name, v))
            # Big-endian by hand: no format string or tuple to allocate per channel.
            frame[pos] = v >> 8 & 0xFF
            frame[pos + 1] = v & 0xFF
            pos += 2
    return bytes(frame)


def decode(frame):
    """Decode one frame into (flags, device_id, boot_id, seq, timestamp_ms, values).

    values maps channel names to scaled integers. Raises WireError, and only
    WireError, on anything that is not a well-formed v1 frame.
    """
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise WireError("frame must be bytes")
    n = len(frame)
    if n < HEADER_SIZE:
        raise WireError("truncated: %d bytes, header needs %d" % (n, HEADER_SIZE))
    if n > MAX_FRAME:
        raise WireError("oversized: %d bytes, at most %d" % (n, MAX_FRAME))
    version, flags, device_id, boot_id, seq, ts_hi, ts_lo, mask = struct.unpack_from(
        HEADER, frame, 0
    )
    if version != VERSION:
        raise WireError("unsupported version %d" % version)
    values = {}
    pos = HEADER_SIZE
    for i in range(len(CHANNELS)):
        if mask >> i & 1:
            name, code, _ = CHANNELS[i]
            if pos + 2 > n:
                raise WireError("truncated: channel %s missing" % name)
            v = frame[pos] << 8 | frame[pos + 1]
            values[name] = v - 0x10000 if code == "h" and v & 0x8000 else v
            pos += 2
    # A channel newer than this decoder: it and everything after it is for newer decoders.
    if pos != n and not mask >> len(CHANNELS):
        raise WireError("trailing bytes: %d after the last channel" % (n - pos))
    return flags, device_id, boot_id, seq, (ts_hi << 32) | ts_lo, values


def scale(name):
    """The factor from a channel's unit to its integer on the wire."""
    return CHANNELS[CHANNEL_IDS[name]][2]


def _check(v, hi, what):
    if not isinstance(v, int) or v < 0 or v > hi:
        raise WireError("%s out of range: %r" % (what, v))
