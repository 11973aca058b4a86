# Checks Ed25519 signatures and SHA-512 digests with firmware/ed25519.py and prints one JSON
# line each. Runs on the MicroPython unix port (so: no annotations, no f-strings).
# Usage: micropython ed25519_runner.py FIRMWARE_DIR CASES_FILE
import json
import sys
from binascii import hexlify, unhexlify

sys.path.insert(0, sys.argv[1])
import ed25519


def main():
    with open(sys.argv[2]) as f:
        cases = json.load(f)
    for c in cases["verify"]:
        ok = ed25519.verify(unhexlify(c["key"]), unhexlify(c["msg"]), unhexlify(c["sig"]))
        print(json.dumps({"verify": ok}))
    for m in cases["sha512"]:
        print(json.dumps({"sha512": hexlify(ed25519.sha512(unhexlify(m))).decode()}))


main()
