"""The API's routes (README, "For users: the API"): the route table that both registers
the handlers and generates the OpenAPI document. The handlers live in one module
per resource (accounts, triggers, results, backtests, events, agents, telegram)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.api.models import (
    ActionStatOut,
    AgentQuery,
    ApiKeyCreated,
    ApiKeyIn,
    ApiKeyOut,
    BacktestIn,
    BacktestOut,
    BacktestTriggerIn,
    EventsQuery,
    EventStatOut,
    LinkCodeOut,
    LoginIn,
    LogoutQuery,
    McpTokenIn,
    McpTokenOut,
    McpTokenRemovalIn,
    Page,
    PageQuery,
    PasswordChangeIn,
    RegisterIn,
    ResultOut,
    ResultsQuery,
    RetryOut,
    SigningDomainOut,
    StatePage,
    StatsActionsQuery,
    StatsEventsQuery,
    TelegramChatOut,
    TokenOut,
    TriggerOut,
    TriggerPatch,
    UserOut,
)
from services.api.openapi import PathParam, Route, build_document
from services.api.routes._shared import PRODUCER
from services.api.routes.accounts import (
    change_password,
    create_api_key,
    list_api_keys,
    login,
    logout_everywhere,
    register,
    revoke_api_key,
)
from services.api.routes.agents import delete_mcp_token, put_mcp_token, signing_domain
from services.api.routes.backtests import backtest_trigger, backtest_unsaved
from services.api.routes.events import action_stats, event_stats, list_events
from services.api.routes.results import list_trigger_results, retry_result
from services.api.routes.telegram import create_link_code, list_chats, unlink_chat
from services.api.routes.triggers import (
    create_trigger,
    delete_trigger,
    get_trigger,
    get_trigger_state,
    list_triggers,
    update_trigger,
)
from shared.contract.event_fields import INT32_MAX, INT63_MAX
from shared.contract.events import Event
from shared.contract.triggers import TriggerCreate

__all__ = ["DOCUMENT", "PRODUCER", "ROUTES", "add_routes", "document"]

DOCUMENT = web.AppKey("document", dict)


async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(request.app[DOCUMENT])


# --- the table -----------------------------------------------------------------------------

#: Trigger ids are UUIDs (the server makes them). The router leaves "backtest" to the
#: static route beside it, so that its 405 names that route's methods only.
_TRIGGER = PathParam(
    "trigger_id",
    {"type": "string", "format": "uuid"},
    "A trigger's id.",
    router_pattern=r"(?!backtest$)[^{}/]+",
)


def _path(name: str, description: str, **schema: Any) -> PathParam:
    return PathParam(name, {"type": "string", **schema}, description)


_AGENT = (
    PathParam("chain_id", {"type": "integer", "minimum": 1, "maximum": INT32_MAX}, "The chain id."),
    PathParam("agent_id", {"type": "integer", "minimum": 0, "maximum": INT63_MAX}, "The agent id."),
)

_CHAT = _path("chat_id", "The chat's numeric id.", pattern=r"^-?[0-9]{1,20}$")

ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/auth/register", register, "Create an account", 201, UserOut, RegisterIn,
          auth=False, errors=(409, 429, 503), tag="accounts",
          description="At most REGISTER_MAX_PER_ADDRESS (20) per client address per hour."),
    Route("POST", "/v1/auth/login", login, "Log in: an access token", 200, TokenOut, LoginIn,
          auth=False, errors=(401, 429, 503), tag="accounts",
          description="Wrong username and wrong password give the same 401."),
    Route("POST", "/v1/auth/logout-all", logout_everywhere,
          "Log out everywhere: revoke every access token issued so far", 204,
          query=LogoutQuery, errors=(403,), tag="accounts",
          description=(
              "Needs a login's access token (an API key answers 403). Tokens issued up to "
              "the second of this call stop working, this one too; with `api_keys=true` "
              "every API key of the user is revoked as well."
          )),
    Route("POST", "/v1/auth/password", change_password,
          "Change your password: a fresh access token, every earlier one revoked", 200,
          TokenOut, PasswordChangeIn, errors=(403, 409, 429, 503), tag="accounts",
          description=(
              "Needs a login's access token (an API key answers 403) and the current "
              "password (wrong: 403; failures count as failed logins, 429 beyond). Every "
              "access token issued before stops working; with `revoke_api_keys` every "
              "API key too. Answers a new access token."
          )),
    Route("POST", "/v1/api-keys", create_api_key, "Create an API key (shown once)", 201,
          ApiKeyCreated, ApiKeyIn, errors=(403, 409), tag="accounts",
          description="Needs a login's access token: an API key cannot create keys."),
    Route("GET", "/v1/api-keys", list_api_keys, "List your API keys", 200, Page[ApiKeyOut],
          query=PageQuery, tag="accounts"),
    Route("DELETE", "/v1/api-keys/{key_id}", revoke_api_key, "Revoke an API key", 200, ApiKeyOut,
          path_params=(_path("key_id", "An API key's id.", format="uuid"),), errors=(403, 404),
          tag="accounts", description="Needs a login's access token, not an API key."),
    Route("GET", "/v1/triggers", list_triggers, "List your triggers", 200, Page[TriggerOut],
          query=PageQuery, tag="triggers"),
    Route("POST", "/v1/triggers", create_trigger, "Create a trigger", 201, TriggerOut,
          TriggerCreate, errors=(409,), tag="triggers",
          description="At most MAX_TRIGGERS_PER_USER (1,000) triggers per user: 409 beyond."),
    Route("POST", "/v1/triggers/backtest", backtest_unsaved,
          "Backtest an unsaved trigger over stored events", 200, BacktestOut, BacktestTriggerIn,
          tag="triggers"),
    Route("GET", "/v1/triggers/{trigger_id}", get_trigger, "A trigger", 200, TriggerOut,
          path_params=(_TRIGGER,), errors=(404,), tag="triggers"),
    Route("PATCH", "/v1/triggers/{trigger_id}", update_trigger,
          "Change a trigger (e.g. enable or disable it)", 200, TriggerOut, TriggerPatch,
          path_params=(_TRIGGER,), errors=(404,), tag="triggers",
          description=(
              "Only the fields given change. `conditions` replace all conditions. `actions` "
              "items with the `id` of an existing action change it in place (its signing "
              "secret stays unless `config.signing_secret` is given, null removes it); items "
              "without `id` are new; existing actions not listed are deleted."
          )),
    Route("DELETE", "/v1/triggers/{trigger_id}", delete_trigger, "Delete a trigger", 204,
          path_params=(_TRIGGER,), errors=(404,), tag="triggers"),
    Route("GET", "/v1/triggers/{trigger_id}/state", get_trigger_state,
          "A trigger's stateful condition state, per scope", 200, StatePage, query=PageQuery,
          path_params=(_TRIGGER,), errors=(404,), tag="history"),
    Route("GET", "/v1/triggers/{trigger_id}/results", list_trigger_results,
          "A trigger's action results", 200, Page[ResultOut], query=ResultsQuery,
          path_params=(_TRIGGER,), errors=(404,), tag="history"),
    Route("POST", "/v1/triggers/{trigger_id}/results/{job_id}/retry", retry_result,
          "Redrive a failed or dead-lettered job", 202, RetryOut,
          path_params=(_TRIGGER, _path("job_id", "The job's id.", maxLength=200)),
          errors=(404, 409, 429, 503), tag="history",
          description="The same job is redriven at most once per REDRIVE_INTERVAL (60 s)."),
    Route("POST", "/v1/triggers/{trigger_id}/backtest", backtest_trigger,
          "Backtest a trigger over stored events", 200, BacktestOut, BacktestIn,
          path_params=(_TRIGGER,), errors=(404, 409), tag="triggers"),
    Route("GET", "/v1/events", list_events, "Stored events, newest first", 200, Page[Event],
          query=EventsQuery, tag="history"),
    Route("GET", "/v1/stats/events", event_stats, "Events per hour", 200, Page[EventStatOut],
          query=StatsEventsQuery, tag="stats"),
    Route("GET", "/v1/stats/actions", action_stats, "Your actions per hour", 200,
          Page[ActionStatOut], query=StatsActionsQuery, tag="stats"),
    Route("GET", "/v1/agents/signing-domain", signing_domain,
          "What an agent's owner signs as `deployment:`", 200, SigningDomainOut, tag="agents",
          description=(
              "The value of the `deployment:` line in the MCP token messages: "
              "SIGNING_DOMAIN, or one derived from this deployment's secrets. A signature "
              "made for one deployment is refused by every other."
          )),
    Route("PUT", "/v1/agents/{chain_id}/{agent_id}/mcp-token", put_mcp_token,
          "Set an agent's MCP bearer token (signed by its owner)", 200, McpTokenOut, McpTokenIn,
          path_params=_AGENT, query=AgentQuery,
          errors=(403, 404, 409, 429), tag="agents",
          description=(
              "The body carries the token, its scope (`allowed_tools`: the tool names a "
              "call with it may name; `allowed_users`: the users whose triggers may send "
              "it; either may be `\"*\"` for any) and an EIP-191 (personal_sign) "
              "signature, by the agent's current owner, of the lines `ERC-8004 MCP token`, "
              "`deployment: <see GET /v1/agents/signing-domain>`, `chain_id: <id>`, "
              "`registry: <the query's registry>` (only when given), "
              "`agent_id: <id>`, `token_sha256: 0x<hex>`, `allowed_tools: <names joined "
              "by , or *>`, `allowed_users: <ids joined by , or *>`, `nonce: <nonce>`, "
              "`expires_at: <unix seconds>` joined by `\\n`. A nonce is accepted once; the "
              "expiry is at most an hour ahead; at most SIGNATURE_CHECKS_PER_MINUTE (30) "
              "signatures are checked per user and minute (429 beyond). The token is "
              "never returned, and the dispatcher sends it only on calls its scope allows."
          )),
    Route("DELETE", "/v1/agents/{chain_id}/{agent_id}/mcp-token", delete_mcp_token,
          "Remove an agent's MCP bearer token (signed by its owner)", 204, None,
          McpTokenRemovalIn,
          path_params=_AGENT, query=AgentQuery,
          errors=(403, 404, 409, 429), tag="agents",
          description=(
              "The body carries an EIP-191 (personal_sign) signature, by the agent's "
              "current owner, of the lines `ERC-8004 MCP token removal`, `deployment: "
              "<see GET /v1/agents/signing-domain>`, `chain_id: <id>`, "
              "`registry: <the query's registry>` (only when given), "
              "`agent_id: <id>`, `nonce: <nonce>`, `expires_at: <unix seconds>` joined by "
              "`\\n`; nonce and expiry as for setting it. MCP actions of the agent then "
              "call its server without a token."
          )),
    Route("POST", "/v1/telegram/link-codes", create_link_code,
          "Create a one-time code to link a Telegram chat", 201, LinkCodeOut,
          errors=(409,), tag="telegram",
          description=(
              "Send `/start <code>` to the operator's bot in the chat to link: in a "
              "private chat with the bot, in a group as one of its administrators, or as "
              "a post of a channel where the bot is an administrator. The bot answers in "
              "the chat. A code links one chat, once, within TELEGRAM_LINK_CODE_TTL "
              "(900 s); at most MAX_LINK_CODES_PER_USER (10) unused codes at a time: 409 "
              "beyond. Telegram actions may name only linked chats."
          )),
    Route("GET", "/v1/telegram/chats", list_chats, "List the Telegram chats you linked", 200,
          Page[TelegramChatOut], query=PageQuery, tag="telegram"),
    Route("DELETE", "/v1/telegram/chats/{chat_id}", unlink_chat, "Unlink a Telegram chat",
          204, path_params=(_CHAT,),
          errors=(404,), tag="telegram",
          description=(
              "Telegram actions naming the chat fail from then on (\"not linked\"), "
              "without a message sent; the chat's other users keep their own links."
          )),
    Route("GET", "/openapi.json", openapi_document, "This document", 200, auth=False,
          tag="meta"),
)  # fmt: skip


def document() -> dict[str, Any]:
    doc = build_document(ROUTES, title="erc8004-backend API", version="1.0.0")
    doc["paths"]["/openapi.json"]["get"]["responses"]["200"] = {
        "description": "OpenAPI 3.1",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
    return doc


def add_routes(app: web.Application) -> None:
    app[DOCUMENT] = document()
    for route in ROUTES:
        app.router.add_route(
            route.method, route.router_path, route.handler, name=route.operation_id
        )
