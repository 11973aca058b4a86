"""The dashboard's settings, validated once at start and frozen."""

from __future__ import annotations

from pathlib import Path

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    IPvAnyNetwork,
    SecretStr,
    model_validator,
)

from gateway.alerts.config import DEFAULT_RULES
from gateway.dashboard.accounts import USER_NAME, Role
from gateway.topics import Topics

__all__ = ["DashboardConfig", "DashboardTls"]


class DashboardTls(BaseModel):
    """The certificate the dashboard serves HTTPS with (`trackside gateway certs` makes one)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    cert_file: Path
    key_file: Path


class DashboardConfig(BaseModel):
    """Where to read from, where to listen, and who may look and act (docs/dashboard.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = Field(min_length=1)
    # Who may look and act: the single-operator token, or accounts (a users file and/or a
    # single sign-on proxy's header); one of them, never both (docs/dashboard.md).
    token: SecretStr | None = None
    token_operator: str = Field("operator", pattern=USER_NAME)
    users_file: Path | None = None
    trusted_user_header: str | None = Field(None, min_length=1)
    trusted_role_header: str | None = Field(None, min_length=1)
    trusted_default_role: Role = "viewer"
    trusted_proxies: tuple[IPvAnyNetwork, ...] = ()
    tls: DashboardTls | None = None
    topics: Topics = Topics()
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    # Values kept per channel and train for the sparklines (memory stays bounded).
    history: int = Field(120, ge=2, le=10_000)
    # Telemetry records read back per partition at start, to fill the sparklines.
    telemetry_backlog: int = Field(5000, ge=0)
    # librdkafka settings passed through untouched to the consumer and the producer.
    kafka_settings: dict[str, str] = Field(default_factory=dict)
    # The alert service's rule file: its levels are drawn on the charts (`GET /api/rules`).
    rules_file: Path = DEFAULT_RULES
    # Alertmanager, for maintenance windows (silences); None hides them.
    alertmanager_url: HttpUrl | None = None

    @model_validator(mode="after")
    def _one_way_to_sign_in(self) -> DashboardConfig:
        accounts = self.users_file is not None or self.trusted_user_header is not None
        if self.token is not None and accounts:
            raise ValueError(
                "token: the shared token is the single-operator mode; with users_file or "
                "trusted_user_header every action is recorded under an account: drop the token"
            )
        if self.token is None and not accounts:
            raise ValueError(
                "set users_file (accounts from `trackside users add`), trusted_user_header "
                "(behind a single sign-on proxy) or token (single-operator mode)"
            )
        if self.trusted_user_header is not None and not self.trusted_proxies:
            raise ValueError(
                "trusted_proxies: list the proxy's addresses; trusted_user_header is believed "
                "only from them"
            )
        return self
