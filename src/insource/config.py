"""Configuration: TOML, validated strictly, secrets only as `env::NAME` references.

`load_config(path)` returns an immutable `Config`. Nothing here mutates module globals; every
component receives the config (or the part it needs) explicitly.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from insource.errors import ConfigError

ENV_PREFIX = "env::"
DEFAULT_CONFIG_NAME = "insource.toml"
CONFIG_ENV = "INSOURCE_CONFIG"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _secret_ref(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.startswith(ENV_PREFIX) or len(value) <= len(ENV_PREFIX):
        raise ValueError("secrets must be referenced as env::NAME, never written inline")
    return value


def resolve_secret(ref: str | None) -> str | None:
    """Resolve an `env::NAME` reference; None when unset."""
    if ref is None:
        return None
    return os.environ.get(ref[len(ENV_PREFIX) :]) or None


class ServerConfig(Strict):
    secret: str | None = None
    admin_key: str | None = None
    max_body_mb: float = Field(default=8.0, gt=0)
    default_max_tokens: int = Field(default=256, ge=1)
    redis_url: str | None = None

    _check_secret = field_validator("secret", "admin_key")(_secret_ref)

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        if value is None or value.startswith(ENV_PREFIX):
            return value
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis_url must be redis://HOST:PORT/DB or env::NAME")
        if "@" in value.split("//", 1)[1].split("/", 1)[0]:
            raise ValueError("a redis_url with a password must be referenced as env::NAME")
        return value


class StoreConfig(Strict):
    url: str = "sqlite:///./insource.db"
    fsync: Literal["batch", "off"] = "batch"  # the usage journal: fsync'd by the writer at most once a second, or never


class RegistryConfig(Strict):
    path: str | None = None


UNDECLARED_TERMS = "undeclared"  # a shipped terms profile of category "none" (capture/terms.toml)
# Hosts of commercial APIs whose outputs are governed by that provider's terms, whatever the config says.
_HOST_TERMS = (
    ("api.openai.com", "openai"),
    (".openai.azure.com", "azure-openai"),
    (".cognitiveservices.azure.com", "azure-openai"),
    (".services.ai.azure.com", "azure-openai"),
    ("api.anthropic.com", "anthropic"),
    ("generativelanguage.googleapis.com", "google-gemini"),
)
# Profiles saying "no provider's terms apply": never right for a commercial API's host.
_OWN_TERMS = ("self-hosted", "in-house")


def host_terms(base_url: str) -> str | None:
    """The terms profile a commercial API's host implies (None for any other host)."""
    host = (urlsplit(base_url).hostname or "").lower().rstrip(".")
    for suffix, profile in _HOST_TERMS:
        if host == suffix.lstrip(".") or (suffix.startswith(".") and host.endswith(suffix)):
            return profile
    return None


def default_terms(kind: str, base_url: str) -> str:
    """The terms of a provider that declares none: its API host's profile, Azure's for kind "azure", else
    "undeclared" (treated as no training until `terms` is set)."""
    return host_terms(base_url) or ("azure-openai" if kind == "azure" else UNDECLARED_TERMS)


PROVIDER_GROUP = "insource.providers"  # entry point group: built-in and third-party provider kinds alike
BUILTIN_PROVIDER_KINDS = ("azure", "openai")  # what a source tree that was never installed still offers


def provider_kinds() -> set[str]:
    """The provider kinds installed: the names in the `insource.providers` entry point group (read from
    package metadata; nothing is imported), else the built-ins when insource runs uninstalled."""
    from importlib.metadata import entry_points

    return {ep.name for ep in entry_points(group=PROVIDER_GROUP)} | set(BUILTIN_PROVIDER_KINDS)


class ProviderConfig(Strict):
    kind: str
    base_url: str
    api_key: str | None = None
    terms: str = UNDECLARED_TERMS  # filled from kind/base_url when absent: see default_terms
    api_version: str = "2024-10-21"
    ttft_timeout_s: float = Field(default=60.0, gt=0)
    total_timeout_s: float = Field(default=600.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    circuit_failures: int = Field(default=5, ge=1)
    circuit_reset_s: float = Field(default=10.0, gt=0)

    _check_key = field_validator("api_key")(_secret_ref)

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        kinds = provider_kinds()
        if value not in kinds:
            raise ValueError(
                f"unknown provider kind {value!r}; installed: {', '.join(sorted(kinds))} "
                f"(a plugin adds one under the entry point group {PROVIDER_GROUP!r})"
            )
        return value

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="before")
    @classmethod
    def _default_terms(cls, data: Any) -> Any:
        if isinstance(data, dict) and "terms" not in data:
            kind, url = data.get("kind"), data.get("base_url")
            if isinstance(kind, str) and isinstance(url, str):
                return {**data, "terms": default_terms(kind, url)}
        return data

    @model_validator(mode="after")
    def _terms_match_host(self) -> ProviderConfig:
        implied = host_terms(self.base_url)
        if implied and self.terms in _OWN_TERMS:
            raise ValueError(
                f"terms = {self.terms!r} says no provider's terms apply, but base_url is a commercial API whose "
                f"outputs fall under the {implied!r} profile: set terms = {implied!r} (or a [terms.NAME] profile "
                "of your own after legal review)"
            )
        return self


class Price(Strict):
    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(default=0.0, ge=0)
    cached_input_per_mtok: float | None = Field(default=None, ge=0)
    batch_input_per_mtok: float | None = Field(default=None, ge=0)  # Batch API; default: half of input
    batch_output_per_mtok: float | None = Field(default=None, ge=0)  # Batch API; default: half of output

    @property
    def cached(self) -> float:
        return self.input_per_mtok if self.cached_input_per_mtok is None else self.cached_input_per_mtok


class ModelConfig(Strict):
    targets: Annotated[list[str], Field(min_length=1)]
    price: Price | None = None
    free: bool = False
    cache: bool = False  # answers of this alias may come from the response cache (when `[cache] enabled`)

    @field_validator("targets")
    @classmethod
    def _targets(cls, value: list[str]) -> list[str]:
        for target in value:
            provider, _, model = target.partition(":")
            if not provider or not model:
                raise ValueError(f"target {target!r} must be PROVIDER:UPSTREAM_MODEL")
        return value


class TenantCapture(Strict):
    enabled: bool = True
    redact: bool = True


class CaptureConfig(Strict):
    enabled: bool = True
    redactors: list[str] = ["secrets", "email", "phone", "card", "iban"]
    tenants: dict[str, TenantCapture] = {}
    queue_size: int = Field(default=50_000, ge=1)


class TermsProfileConfig(Strict):
    category: Literal["any", "internal", "none"]
    summary: str
    clause: str = ""
    source: str = ""
    date: str = ""


class RouteConfig(Strict):
    model: str
    mode: Literal["shadow", "canary", "cascade", "full"]
    percent: float = Field(default=0.0, ge=0, le=100)
    threshold: float | None = Field(default=None, ge=0, le=1)
    target_agreement: float | None = Field(default=None, ge=0, le=1)
    audit_rate: float | None = Field(default=None, ge=0, le=1)  # None: 0.02 for a cascade with a target, else 0
    floor: float = Field(default=0.9, ge=0, le=1)
    calibrate: int | None = Field(default=None, ge=0)  # None: enough live requests for target_agreement


class TenantConfig(Strict):
    budget_usd: float | None = Field(default=None, ge=0)
    cache: bool = False  # every model this tenant uses may be answered from the response cache


class CacheConfig(Strict):
    """The response cache: exact repeats of a request, per tenant, answered without the upstream."""

    enabled: bool = False
    ttl_s: float = Field(default=300.0, gt=0)
    max_mb: float = Field(default=64.0, gt=0)
    cache_nondeterministic: bool = False  # also cache sampled requests (temperature > 0, or none: 1)


class OtelConfig(Strict):
    """OpenTelemetry traces (the `otel` extra): the OTLP exporter reads the standard `OTEL_*` variables."""

    enabled: bool = False
    capture_content: bool = False  # prompt and answer text on spans (gen_ai.input/output.messages)
    service_name: str = "insource"  # unless OTEL_SERVICE_NAME is set


class BatchConfig(Strict):
    """The Batch API: how often each worker asks the upstream about unfinished batches (to meter them when they
    finish, even if no caller asks); 0 never (then a batch is metered when its tenant retrieves it)."""

    poll_s: float = Field(default=60.0, ge=0)


class InhouseConfig(Strict):
    cpu_usd_per_hour: float = Field(default=0.10, ge=0)
    # generative students: an OpenAI-compatible server (vLLM --enable-lora, llama.cpp) already serving each
    # student's adapter under its name TASK@vN; unset, `insource serve` runs llama.cpp itself
    generative_base_url: str | None = None
    # how long a generative student may take to answer (or between two streamed tokens) before the teacher
    # answers instead and the failure is counted; a student that hung that long is restarted
    generative_timeout_s: float = Field(default=60.0, gt=0)


class ReportConfig(Strict):
    timezone: str = "UTC"  # an IANA name: day boundaries of every report (CLI, JSON, dashboard)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r}: use an IANA name such as UTC or Europe/Berlin") from None
        return value


class Config(Strict):
    server: ServerConfig = ServerConfig()
    store: StoreConfig = StoreConfig()
    registry: RegistryConfig = RegistryConfig()
    providers: dict[str, ProviderConfig] = {}
    models: dict[str, ModelConfig] = {}
    capture: CaptureConfig = CaptureConfig()
    terms: dict[str, TermsProfileConfig] = {}
    routes: dict[str, RouteConfig] = {}
    inhouse: InhouseConfig = InhouseConfig()
    report: ReportConfig = ReportConfig()
    otel: OtelConfig = OtelConfig()
    batch: BatchConfig = BatchConfig()
    tenants: dict[str, TenantConfig] = {}
    cache: CacheConfig = CacheConfig()
    base_dir: str = "."

    def resolve_path(self, path: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (Path(self.base_dir) / p)

    def sqlite_path(self) -> Path | None:
        url = self.store.url
        if url.startswith("sqlite:///"):
            return self.resolve_path(url[len("sqlite:///") :])
        return None

    def registry_path(self) -> Path:
        if self.registry.path:
            return self.resolve_path(self.registry.path)
        db = self.sqlite_path()
        return (db.parent if db else Path(self.base_dir)) / "models"


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key '{path}'")
        else:
            lines.append(f"'{path}': {err['msg']}")
    return f"invalid config {source}: " + "; ".join(lines)


def _check_targets(cfg: Config, source: str) -> None:
    for name, model in cfg.models.items():
        for target in model.targets:
            provider = target.partition(":")[0]
            if provider not in cfg.providers:
                raise ConfigError(
                    f"invalid config {source}: 'models.{name}.targets' names unknown provider '{provider}'"
                )


def parse_config(data: dict[str, Any], base_dir: Path, source: str = "<embedded>") -> Config:
    if "base_dir" in data:
        raise ConfigError(f"invalid config {source}: unknown key 'base_dir'")
    try:
        cfg = Config.model_validate({**data, "base_dir": str(base_dir)})
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None
    _check_targets(cfg, source)
    return cfg


def find_config(path: str | os.PathLike[str] | None = None) -> Path | None:
    """The config file to read: `path`, else $INSOURCE_CONFIG, else `./insource.toml` if it exists; else None."""
    if path is not None and str(path):
        return Path(path)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    default = Path.cwd() / DEFAULT_CONFIG_NAME
    return default if default.exists() else None


def missing_env(cfg: Config) -> list[str]:
    """`env::NAME` references of the config whose variable is not set (or empty), as "section.key: NAME"."""
    missing: list[str] = []

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{where}.{key}" if where else str(key))
        elif isinstance(value, str) and value.startswith(ENV_PREFIX) and resolve_secret(value) is None:
            missing.append(f"{where} = {value}")

    walk(cfg.model_dump(exclude={"base_dir"}), "")
    return missing


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load `path`, else $INSOURCE_CONFIG, else `./insource.toml`, else the embedded defaults."""
    found = find_config(path)
    if found is None:
        return parse_config({}, Path.cwd())
    file = found
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config {file}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"invalid config {file}: not valid TOML ({exc})") from None
    return parse_config(data, file.resolve().parent, str(file))
