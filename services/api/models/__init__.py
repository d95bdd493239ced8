"""The API's own request and response models. Trigger bodies are the contract models
of shared.contract.triggers (conditions and actions: shared.contract.conditions and
shared.contract.actions); events are shared.contract.events.Event. The OpenAPI document is
generated from these same classes (services/api/openapi.py).

One module per resource, as in ``routes/`` (accounts, triggers, results, events,
backtests, agents, telegram), over ``_shared`` (the bases, errors and pages); their names are
one namespace, as in the document's ``components.schemas``, and are imported from here."""

from __future__ import annotations

from services.api.models._shared import ErrorDetail, ErrorOut, Page, PageQuery
from services.api.models.accounts import (
    ApiKeyCreated,
    ApiKeyIn,
    ApiKeyOut,
    LoginIn,
    LogoutQuery,
    PasswordChangeIn,
    RegisterIn,
    TokenOut,
    UserOut,
)
from services.api.models.agents import (
    AgentQuery,
    McpTokenIn,
    McpTokenOut,
    McpTokenRemovalIn,
    SigningDomainOut,
)
from services.api.models.backtests import BacktestIn, BacktestOut, BacktestTriggerIn, FiringOut
from services.api.models.events import (
    ActionStatOut,
    EventsQuery,
    EventStatOut,
    StatsActionsQuery,
    StatsEventsQuery,
)
from services.api.models.results import ResultOut, ResultsQuery, RetryOut
from services.api.models.telegram import LinkCodeOut, TelegramChatOut
from services.api.models.triggers import (
    ActionOut,
    ActionPatch,
    ConditionOut,
    ConditionPatch,
    StateItem,
    StatePage,
    TriggerOut,
    TriggerPatch,
)

__all__ = [
    "ActionOut",
    "ActionPatch",
    "ActionStatOut",
    "AgentQuery",
    "ApiKeyCreated",
    "ApiKeyIn",
    "ApiKeyOut",
    "BacktestIn",
    "BacktestOut",
    "BacktestTriggerIn",
    "ConditionOut",
    "ConditionPatch",
    "ErrorDetail",
    "ErrorOut",
    "EventStatOut",
    "EventsQuery",
    "FiringOut",
    "LinkCodeOut",
    "LoginIn",
    "LogoutQuery",
    "McpTokenIn",
    "McpTokenOut",
    "McpTokenRemovalIn",
    "Page",
    "PageQuery",
    "PasswordChangeIn",
    "RegisterIn",
    "ResultOut",
    "ResultsQuery",
    "RetryOut",
    "SigningDomainOut",
    "StateItem",
    "StatePage",
    "StatsActionsQuery",
    "StatsEventsQuery",
    "TelegramChatOut",
    "TokenOut",
    "TriggerOut",
    "TriggerPatch",
    "UserOut",
]
