# Runs the wire-format vectors through firmware/wire.py and prints one canonical JSON line each.
# The same script runs on CPython and on the MicroPython unix port (so: no annotations, no
# f-strings, only modules both have); the tests compare the two outputs and the expectations.
# Usage: <python or micropython> vector_runner.py FIRMWARE_DIR VECTORS_FILE
import json
import sys
from binascii import hexlify, unhexlify

sys.path.insert(0, sys.argv[1])
import wire


def decoded(frame):
    try:
        flags, device_id, boot_id, seq, ts, values = wire.decode(frame)
    except wire.WireError as e:
        return {"error": str(e)}
    keys = sorted(values)
    return {"flags": flags, "device_id": device_id, "boot_id": boot_id, "seq": seq,
            "timestamp_ms": ts, "values": [[k, values[k]] for k in keys]}


def main():
    with open(sys.argv[2]) as f:
        vectors = json.load(f)
    for v in vectors["valid"] + vectors["invalid"]:
        out = {"name": v["name"], "decoded": decoded(unhexlify(v["hex"]))}
        e = v.get("expect")
        if e is not None and v.get("encodable", True):
            frame = wire.encode(e["device_id"], e["boot_id"], e["seq"], e["timestamp_ms"],
                                e["values"], e["flags"])
            out["encoded"] = hexlify(frame).decode()
        print(json.dumps(out))


main()
