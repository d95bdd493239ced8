"""The actions of a trigger: the action types, the config model of each type
(TelegramConfig, RestConfig, McpConfig), the header rules of REST actions (headers
reserved for the dispatcher, headers that carry credentials) and `Action`, one
trigger_actions row. Secrets in configs are masked when dumped unless the
REVEAL_SECRETS context asks for them in clear text."""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    JsonValue,
    SecretStr,
    SerializationInfo,
    Strict,
    StrictBool,
    ValidationInfo,
    WithJsonSchema,
    create_model,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError

from shared.contract.validation import Errors, has_nul, no_nul


class ActionType(StrEnum):
    """trigger_actions.action_type."""

    telegram = "telegram"
    rest = "rest"
    mcp = "mcp"


#: Serialization context that writes secrets in clear text (storage, job messages).
REVEAL_SECRETS: Final[dict[str, bool]] = {"reveal_secrets": True}

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")
_TOOL_NAME = re.compile(r"[A-Za-z0-9_./-]{1,128}")
_CHAT_ID = re.compile(r"-?[0-9]{1,20}|@[A-Za-z][A-Za-z0-9_]{3,31}")


#: A header value: one line, no NUL.
_ONE_LINE: Final = "^[^\\r\\n\\x00]*$"

#: The scheme and authority (userinfo, host, port) of a URL: up to the first /, ? or #
#: after "//".
_URL_ORIGIN = re.compile(r"[^:/?#]*://[^/?#]*")


def _http_url(v: str) -> str:
    if len(v) > 2048 or any(c.isspace() or ord(c) < 32 for c in v):
        raise PydanticCustomError("url", "must be an http(s) URL of at most 2048 characters")
    head = _URL_ORIGIN.match(v)
    if head is not None and "{" in head.group():
        # where a request goes (and its secrets with it) is fixed when the trigger
        # is written: templates may shape the path and query only
        raise PydanticCustomError(
            "url", "templates may not be in the scheme, userinfo, host or port"
        )
    try:
        parts = urlsplit(v)
        _ = parts.port
    except ValueError as exc:
        raise PydanticCustomError("url", "not a valid URL: {reason}", {"reason": str(exc)}) from exc
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise PydanticCustomError("url", "must be an http or https URL with a host")
    return v


#: What _http_url accepts, as JSON Schema: http(s), a host name or IPv4 address (ASCII,
#: no template; IPv6 literals are accepted but not promised), an
#: optional port 0-65535, then a path, query or fragment without spaces or control
#: characters; at most 2048 characters.
_URL_SCHEMA: Final[dict[str, Any]] = {
    "maxLength": 2048,
    "pattern": (
        r"^[Hh][Tt][Tt][Pp][Ss]?://"
        r"(?:[A-Za-z0-9._~%!$&'()*+,;=:-]*@)?"
        r"[A-Za-z0-9._~%!$&'()*+,;=-]+"
        r"(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})?)?"
        # no character str.isspace() or below U+0020, spelled out: JSON Schema's \s
        # is not Python's
        r"(?:[/?#][^\x00-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*)?$"
    ),
}
UrlText = Annotated[str, Strict(), Field(json_schema_extra=_URL_SCHEMA)]
TimeoutMs = Annotated[int, Strict(), Field(ge=100, le=60000)]
MaxAttempts = Annotated[int, Strict(), Field(ge=1, le=20)]
Template = str | dict[str, Any]


#: Longest template source: a string, or an object template written as JSON.
MAX_TEMPLATE_CHARS: Final = 65536


def _template(v: Any) -> Any:
    if v is not None and not isinstance(v, str | dict):
        raise PydanticCustomError("template", "must be a string, an object or null")
    if isinstance(v, str) and len(v) > MAX_TEMPLATE_CHARS:
        raise PydanticCustomError("template", f"must be at most {MAX_TEMPLATE_CHARS} characters")
    if isinstance(v, dict) and len(json.dumps(v, ensure_ascii=False)) > MAX_TEMPLATE_CHARS:
        raise PydanticCustomError(
            "template", f"must be at most {MAX_TEMPLATE_CHARS} characters written as JSON"
        )
    if has_nul(v):
        raise PydanticCustomError("nul_character", "must not contain NUL characters")
    return v


def _reveal(info: SerializationInfo) -> bool:
    context = info.context
    return isinstance(context, dict) and context.get("reveal_secrets") is True


class TelegramConfig(BaseModel):
    """Config of a telegram action."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    chat_id: Annotated[
        str,
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "pattern": f"^(?:{_CHAT_ID.pattern})$"},
                    {"type": "integer", "minimum": -(2**63) + 1, "maximum": 2**63 - 1},
                ],
                "description": "A linked chat's numeric id, or its @username.",
            }
        ),
    ]
    message_template: Annotated[
        str, Strict(), Field(min_length=1, max_length=4096 * 4), AfterValidator(no_nul)
    ]
    parse_mode: Literal["MarkdownV2", "HTML", "Markdown"] | None = None

    @field_validator("chat_id", mode="before")
    @classmethod
    def _chat_id(cls, v: Any) -> Any:
        if type(v) is float and v.is_integer() and abs(v) < 2**53:
            v = int(v)  # JSON Schema's integer: 1862.0 is 1862
        if type(v) is int:
            v = str(v)
        if type(v) is not str or _CHAT_ID.fullmatch(v) is None:
            raise PydanticCustomError(
                "chat_id", "must be a numeric chat id or an @channel username"
            )
        return v


#: Headers a REST action may not set: message framing and routing (a user-chosen
#: Transfer-Encoding or Content-Length next to the client's own would let a body
#: smuggle a second request onto a shared keep-alive connection), and the ones the
#: dispatcher sets itself.
RESERVED_HEADERS: Final = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "keep-alive",
        "idempotency-key",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)


#: Headers that describe the request, not who makes it: the outbound client keeps
#: them on a redirect to another origin, so they are never secret headers.
FOLLOWS_REDIRECTS: Final = frozenset({"accept", "user-agent", "content-type", "content-encoding"})


def mcp_token_context(chain_id: int, agent_id: int, registry: str = "") -> str:
    """The encryption context of an agent's MCP token: the row it belongs to
    (``agent_mcp_tokens:<chain>:<agent>``, or with its Identity registry named,
    ``agent_mcp_tokens:<chain>:<registry>:<agent>``). The API seals with it, the
    dispatcher opens with it."""
    if not registry:
        return f"agent_mcp_tokens:{chain_id}:{agent_id}"
    return f"agent_mcp_tokens:{chain_id}:{registry}:{agent_id}"


def is_reserved_header(name: str) -> bool:
    lower = name.lower()
    return lower in RESERVED_HEADERS or lower.startswith("proxy-")


#: Header names whose values are credentials: the API takes them only in a REST
#: action's ``secret_headers`` (encrypted at rest, never returned, never on Kafka).
CREDENTIAL_HEADERS = frozenset(
    {
        "authorization",
        "cookie",
        "api-key",
        "x-api-key",
        "x-auth-token",
        "x-access-token",
        "private-token",
    }
)


def _check_headers(errors: Errors, items: dict[str, str]) -> None:
    for name, text in items.items():
        if _TOKEN.fullmatch(name) is None:
            errors.add((name,), "not a valid header name", name)
        elif is_reserved_header(name):
            errors.add((name,), "set by the dispatcher itself (framing, routing or signing)", name)
        elif len(text) > 8192 or any(c in text for c in "\r\n\x00"):
            errors.add((name,), "header values are one line of at most 8192 characters", None)


class RestConfig(BaseModel):
    """Config of a rest (webhook) action."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    url: UrlText
    headers: dict[str, str] = Field(
        default_factory=dict,
        max_length=50,
        json_schema_extra={
            "propertyNames": {"pattern": f"^{_TOKEN.pattern}$"},
            "additionalProperties": {"type": "string", "maxLength": 8192, "pattern": _ONE_LINE},
        },
    )
    body_template: Template | None = None
    timeout_ms: TimeoutMs = 10000
    #: Statuses counted as success; None means any 2xx.
    expected_status: (
        Annotated[list[Annotated[int, Strict(), Field(ge=100, le=599)]], Field(min_length=1)] | None
    ) = None
    signing_secret: Annotated[SecretStr, Field(min_length=1, max_length=1024)] | None = None
    #: Headers that carry credentials (Authorization, API keys): sent like ``headers``
    #: but literal (not templates), stored encrypted, write-only in the API.
    secret_headers: dict[str, SecretStr] | None = Field(
        default=None,
        max_length=20,
        json_schema_extra={
            "propertyNames": {"pattern": f"^{_TOKEN.pattern}$"},
            "additionalProperties": {
                "type": "string",
                "minLength": 1,
                "maxLength": 8192,
                "pattern": _ONE_LINE,
                "writeOnly": True,
            },
        },
    )
    max_attempts: MaxAttempts = 5

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _http_url(v)

    @field_validator("body_template", mode="before")
    @classmethod
    def _body(cls, v: Any) -> Any:
        return _template(v)

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        errors = Errors()
        _check_headers(errors, v)
        errors.raise_any("RestConfig")
        return v

    @field_validator("secret_headers")
    @classmethod
    def _secret_headers(cls, v: dict[str, SecretStr] | None) -> dict[str, SecretStr] | None:
        if v is None:
            return v
        errors = Errors()
        _check_headers(errors, {k: s.get_secret_value() for k, s in v.items()})
        for name, text in v.items():
            if not text.get_secret_value():
                errors.add((name,), "empty: leave the header out instead", None)
            elif name.lower() in FOLLOWS_REDIRECTS:
                errors.add(
                    (name,),
                    "not a secret: this header follows redirects to other origins; give it "
                    "in headers",
                    None,
                )
        errors.raise_any("RestConfig")
        return v

    @model_validator(mode="after")
    def _one_place_per_header(self) -> RestConfig:
        """A header name (in any case) once: in headers or in secret_headers."""
        errors = Errors()
        for field, names in (("headers", self.headers), ("secret_headers", self.secret_headers)):
            seen: set[str] = set()
            for name in names or {}:
                if name.lower() in seen:
                    errors.add((field, name), "the same header twice (names ignore case)", None)
                seen.add(name.lower())
        clear = {k.lower() for k in self.headers}
        for name in self.secret_headers or {}:
            if name.lower() in clear:
                errors.add(
                    ("secret_headers", name),
                    "header named in both headers and secret_headers",
                    None,
                )
        errors.raise_any("RestConfig")
        return self

    @field_serializer("signing_secret")
    def _secret(self, v: SecretStr | None, info: SerializationInfo) -> str | None:
        if v is None:
            return None
        return v.get_secret_value() if _reveal(info) else str(v)

    @field_serializer("secret_headers")
    def _secret_header_values(
        self, v: dict[str, SecretStr] | None, info: SerializationInfo
    ) -> dict[str, str] | None:
        if v is None:
            return None
        return {k: s.get_secret_value() if _reveal(info) else str(s) for k, s in v.items()}


#: McpConfig's rule "exactly one of server_url or resolve_endpoint=true", as JSON Schema.
_ONE_TARGET: Final[list[JsonValue]] = [
    {
        "title": "A fixed server",
        "required": ["server_url"],
        "properties": {"server_url": {"type": "string"}, "resolve_endpoint": {"const": False}},
    },
    {
        "title": "The agent's own server, from its registration file",
        "required": ["resolve_endpoint"],
        "properties": {"resolve_endpoint": {"const": True}, "server_url": {"type": "null"}},
    },
]


class McpConfig(BaseModel):
    """Config of an mcp action: one tools/call to a fixed or resolved server."""

    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra={"oneOf": _ONE_TARGET})

    server_url: UrlText | None = None
    resolve_endpoint: StrictBool = False
    tool_name: Annotated[str, Strict(), Field(pattern=f"^{_TOOL_NAME.pattern}$")]
    arguments_template: Template | None = None
    verify_file_hash: StrictBool = False
    include_file_content: StrictBool = False
    timeout_ms: TimeoutMs = 10000
    max_attempts: MaxAttempts = 5

    @field_validator("server_url")
    @classmethod
    def _server_url(cls, v: str | None) -> str | None:
        return None if v is None else _http_url(v)

    @field_validator("arguments_template", mode="before")
    @classmethod
    def _arguments(cls, v: Any) -> Any:
        return _template(v)

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if (self.server_url is None) == (not self.resolve_endpoint):
            errors = Errors()
            errors.add(
                ("server_url",),
                "exactly one of server_url or resolve_endpoint=true is required",
                self.server_url,
            )
            errors.raise_any("McpConfig")
        return self


ActionConfig = TelegramConfig | RestConfig | McpConfig
_CONFIGS: Final[dict[ActionType, type[ActionConfig]]] = {
    ActionType.telegram: TelegramConfig,
    ActionType.rest: RestConfig,
    ActionType.mcp: McpConfig,
}


class Action(BaseModel):
    """One trigger_actions row: action_type, priority (lower first) and typed config.

    Validation picks the config's model by ``action_type``; the JSON Schema says the
    same as a union discriminated by ``action_type`` of one object schema per type
    (``TelegramAction``, ``RestAction``, ``McpAction``; a subclass's variants are named
    after it), so that generated clients get one typed class per action."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Set on the per-type models the JSON Schema is generated from.
    _schema_variant: ClassVar[bool] = False

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        if cls._schema_variant:
            return handler(core_schema)
        refs = {}
        for kind, config in _CONFIGS.items():
            variant = _schema_variant(cls, kind, config)
            # through the generator itself, so that each variant is a named definition
            generator = handler.generate_json_schema  # type: ignore[attr-defined]
            refs[kind.value] = generator.generate_inner(variant.__pydantic_core_schema__)
        return {
            "oneOf": list(refs.values()),
            "discriminator": {
                "propertyName": "action_type",
                "mapping": {kind: ref["$ref"] for kind, ref in refs.items()},
            },
        }

    action_type: ActionType
    priority: Annotated[int, Strict(), Field(ge=0, le=1000)] = 1
    config: ActionConfig

    @field_validator("config", mode="before")
    @classmethod
    def _typed_config(cls, v: Any, info: ValidationInfo) -> Any:
        action_type = info.data.get("action_type")
        if action_type is None:
            raise PydanticCustomError("action_config", "not checked: action_type is invalid")
        model = _CONFIGS[action_type]
        if isinstance(v, model):
            return v
        if isinstance(v, BaseModel):
            raise PydanticCustomError(
                "action_config", "is not a config of a {kind} action", {"kind": action_type.value}
            )
        return model.model_validate(v, context=info.context)


_VARIANTS: dict[tuple[type[Action], ActionType], type[Action]] = {}


def _schema_variant(base: type[Action], kind: ActionType, config: type[BaseModel]) -> type[Action]:
    """``base`` narrowed to one action type, for the JSON Schema only."""
    variant = _VARIANTS.get((base, kind))
    if variant is None:
        name = base.__name__.replace("Action", f"{kind.value.capitalize()}Action", 1)
        variant = create_model(
            name,
            __base__=base,
            __doc__=f"{base.__doc__.split(chr(10))[0] if base.__doc__ else ''} ({kind.value})",
            action_type=(Literal[kind.value], ...),  # type: ignore[arg-type]
            config=(config, ...),
        )
        variant._schema_variant = True
        _VARIANTS[(base, kind)] = variant
    return variant
