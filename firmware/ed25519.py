# Ed25519 signature check (RFC 8032, section 5.1.7) for the update client (docs/ota.md): a
# board holds only the fleet's public release key. MicroPython's hashlib has no SHA-512, which
# Ed25519 hashes with, so it is here too. Written for size, not speed: only the update client
# imports this, once per offered release (benchmarks/ota.py measures the check).
import struct

_M = 0xFFFFFFFFFFFFFFFF
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
D2 = 2 * D % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def _root(n, k):
    # floor(n ** (1 / k)) by Newton's method; 2**67 is above every root taken here.
    x = 1 << 67
    while 1:
        y = ((k - 1) * x + n // x ** (k - 1)) // k
        if y >= x:
            return x
        x = y


# SHA-512's constants are the fractional parts of the cube roots of the first 80 primes and
# of the square roots of the first 8 (FIPS 180-4, 4.2.3 and 5.3.5): computed at import
# rather than written out (smaller code; a few ms on the unix port), the 80 round constants
# into 640 preallocated bytes (as a list of big ints they took 4 KB of heap, and a growing
# list or bytes needed blocks a heap fragmented by the big-int arithmetic may not have).
_K = bytearray(640)
_H = []
_p = 1
for _i in range(80):
    _p += 1
    while not all(_p % q for q in range(2, _p)):
        _p += 1
    struct.pack_into(">Q", _K, _i * 8, _root(_p << 192, 3) & _M)
    if _i < 8:
        _H.append(_root(_p << 128, 2) & _M)
del _i, _p


def _rotr(x, n):
    return (x >> n | x << 64 - n) & _M


_W = [0] * 80  # SHA-512's message schedule, allocated once: 640 bytes in one piece at import


def sha512(data):
    """The SHA-512 digest of `data` (FIPS 180-4)."""
    h, w = _H[:], _W
    n = len(data)
    data = bytes(data) + b"\x80" + bytes((111 - n) % 128) + (n * 8).to_bytes(16, "big")
    for i in range(0, len(data), 128):
        for t in range(16):
            w[t] = struct.unpack_from(">Q", data, i + t * 8)[0]
        for t in range(16, 80):
            a, b = w[t - 15], w[t - 2]
            w[t] = ((w[t - 16] + (_rotr(a, 1) ^ _rotr(a, 8) ^ a >> 7) + w[t - 7]
                      + (_rotr(b, 19) ^ _rotr(b, 61) ^ b >> 6)) & _M)
        a, b, c, d, e, f, g, hh = h
        for t in range(80):
            t1 = (hh + (_rotr(e, 14) ^ _rotr(e, 18) ^ _rotr(e, 41))
                  + (e & f ^ (e ^ _M) & g) + struct.unpack_from(">Q", _K, t * 8)[0] + w[t])
            t2 = (_rotr(a, 28) ^ _rotr(a, 34) ^ _rotr(a, 39)) + (a & b ^ a & c ^ b & c)
            hh, g, f, e, d, c, b, a = g, f, e, (d + t1) & _M, c, b, a, (t1 + t2) & _M
        h = [(x + y) & _M for x, y in zip(h, (a, b, c, d, e, f, g, hh))]
    for t in range(80):
        w[t] = 0  # its big ints freed for the point arithmetic
    return struct.pack(">8Q", *h)


def _add(p, q):
    # Extended coordinates (X, Y, Z, T), RFC 8032 5.1.4; complete, so it doubles too (one
    # formula instead of two: smaller, 1 multiplication slower per doubling).
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = t1 * D2 * t2 % P
    d = 2 * z1 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return e * f % P, g * h % P, f * g % P, e * h % P


def _decode(s):
    # A point from its 32-byte encoding (RFC 8032 5.1.3), None if it is none.
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= P:
        return None
    u = (y * y - 1) % P
    v = (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if (v * x * x - u) % P:
        if (v * x * x + u) % P:
            return None
        x = x * SQRT_M1 % P
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = P - x
    return x, y, 1, x * y % P


def _encode(p):
    x, y, z, _ = p
    zi = pow(z, P - 2, P)
    x, y = x * zi % P, y * zi % P
    return (y | (x & 1) << 255).to_bytes(32, "little")


B = _decode((4 * pow(5, P - 2, P) % P).to_bytes(32, "little"))


def verify(key, msg, sig):
    """True if `sig` (64 bytes) is the Ed25519 signature of `msg` by public `key` (32 bytes)."""
    if len(key) != 32 or len(sig) != 64:
        return False
    # The hash first, while the heap is in few pieces: decoding a point leaves it fragmented.
    k = int.from_bytes(sha512(sig[:32] + key + msg), "little") % L
    a = _decode(key)
    s = int.from_bytes(sig[32:], "little")
    if a is None or s >= L or _decode(sig[:32]) is None:
        return False
    # [s]B - [k]A in one pass over both scalars (Shamir's trick), then compared with R as
    # encoded: RFC 8032's cofactorless check, as most implementations do it.
    na = (P - a[0], a[1], a[2], P - a[3])
    both = _add(B, na)
    r = (0, 1, 1, 0)
    for i in range(252, -1, -1):  # s and k are below L < 2**253
        r = _add(r, r)
        bit = (s >> i & 1) << 1 | k >> i & 1
        if bit:
            r = _add(r, (na, B, both)[bit - 1])
    return _encode(r) == sig[:32]
