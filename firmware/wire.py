# Trackside wire format v2: one sensor reading in at most 32 bytes: the channel table and the
# encoder. Runs unchanged on CPython and MicroPython; the bridge imports this very file, and its
# decoder (bridge/wire_decoder.py, not loaded on the boards) reads the same table.
# Specified byte by byte in docs/wire-format.md.
import struct

VERSION = 2  # the high 4 bits of byte 0; the low 4 bits are the flags
FLAG_WALL_CLOCK = 1  # timestamp is UTC ms since the Unix epoch, else ms since boot

# Channel table, indexed by channel id (= bit in the channel mask). New channels are only
# ever appended, so an older decoder stops at the first id it does not know. The mask holds 7
# channels a byte, bit 7 set where another mask byte follows; this encoder writes the one byte
# that channels 0-6 need (an eighth channel needs a second mask byte here first).
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

HEADER = ">BIHIHIB"  # version|flags, device id, boot id, seq, ts high 16, ts low 32, mask
HEADER_SIZE = 18  # with a one-byte mask
MAX_FRAME = 64  # decoders reject longer frames
MAX_TIMESTAMP = (1 << 48) - 1


class WireError(ValueError):
    """The one error raised for a reading that cannot be encoded or a frame not decoded."""


def encode(device_id, boot_id, seq, timestamp_ms, values, flags=FLAG_WALL_CLOCK):
    """Encode one reading; values maps channel names to scaled integers."""
    _check(device_id, 0xFFFFFFFF, "device_id")
    _check(boot_id, 0xFFFF, "boot_id")
    _check(seq, 0xFFFFFFFF, "seq")
    _check(timestamp_ms, MAX_TIMESTAMP, "timestamp_ms")
    _check(flags, 0x0F, "flags")
    mask = 0
    for name in values:
        i = CHANNEL_IDS.get(name)
        if i is None:
            raise WireError("unknown channel " + str(name))
        mask |= 1 << i
    frame = bytearray(HEADER_SIZE + 2 * len(values))
    struct.pack_into(
        HEADER, frame, 0, VERSION << 4 | flags, device_id, boot_id, seq,
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


def scale(name):
    """The factor from a channel's unit to its integer on the wire."""
    return CHANNELS[CHANNEL_IDS[name]][2]


def _check(v, hi, what):
    if not isinstance(v, int) or v < 0 or v > hi:
        raise WireError("%s out of range: %r" % (what, v))
