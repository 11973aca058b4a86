"""Secrets among librdkafka settings, kept out of error messages and log lines.

`kafka.settings` pass to librdkafka untouched, so they are a plain mapping, not `SecretStr`s:
`sasl.password`, `ssl.key.password`, `ssl.key.pem` and the like sit beside harmless keys. A
setting whose name contains one of `SECRET_WORDS` is a secret; `mask` replaces the value of
each secret wherever it appears in a text, e.g. librdkafka's answer to settings it refuses
(which quotes a refused value, and a password pasted into the wrong key is such a value).
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["MASK", "SECRET_WORDS", "is_secret", "mask"]

MASK = "***"
# Names of librdkafka settings that carry secrets contain one of these: sasl.password,
# ssl.key.password, ssl.key.pem, ssl.keystore.password, sasl.oauthbearer.client.secret,
# sasl.kerberos.keytab, sasl.oauthbearer.config (may hold a client secret), ...
SECRET_WORDS = ("password", "secret", "key", "token", "credential", "oauthbearer.config")


def is_secret(name: str) -> bool:
    """True if the setting `name` may carry a secret."""
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS)


def mask(text: str, settings: Mapping[str, object]) -> str:
    """`text` with the value of every secret in `settings` replaced by `MASK`.

    Longest first, so that a secret containing another is masked whole. A secret of one or
    two characters is masked too, even though that garbles the rest of the text.
    """
    secrets = {
        str(value)
        for name, value in settings.items()
        if is_secret(name) and not isinstance(value, bool) and str(value)
    }
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
