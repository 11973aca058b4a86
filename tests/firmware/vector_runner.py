# Encodes the valid wire-format vectors with firmware/wire.py and prints one JSON line each.
# The same script runs on CPython and on the MicroPython unix port (so: no annotations, no
# f-strings, only modules both have); the tests compare the two outputs and the expectations.
# Usage: <python or micropython> vector_runner.py FIRMWARE_DIR VECTORS_FILE
import json
import sys
from binascii import hexlify

sys.path.insert(0, sys.argv[1])
import wire


def main():
    with open(sys.argv[2]) as f:
        vectors = json.load(f)
    for v in vectors["valid"]:
        if v.get("encodable", True):
            e = v["expect"]
            frame = wire.encode(e["device_id"], e["boot_id"], e["seq"], e["timestamp_ms"],
                                e["values"], e["flags"])
            print(json.dumps({"name": v["name"], "encoded": hexlify(frame).decode()}))


main()
