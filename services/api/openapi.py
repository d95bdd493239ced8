"""The OpenAPI 3.1 document, generated from the route table and the pydantic models
the handlers validate and answer with: JSON Schema 2020-12 is OpenAPI 3.1's schema
dialect, so the models' own schemas go into ``components.schemas`` unchanged."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from services.api.models import ErrorOut

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REF = "#/components/schemas/{model}"

#: Why each error status may come, for the document.
ERRORS: dict[int, str] = {
    400: "The body is not JSON.",
    401: "No or invalid bearer token (or wrong username or password).",
    403: "Not allowed with this credential (an agent owner's signature is needed, or a "
    "login's access token where an API key was given).",
    404: "No such object (or it belongs to another user).",
    409: "Conflicts with the current state.",
    413: "The body is too large.",
    422: "Invalid input; `details` name each field.",
    429: "Too many requests of this kind (failed logins, registrations, signature checks, "
    "redrives); retry after `Retry-After` seconds.",
    503: "Busy or a dependency (Kafka) is unavailable; retry after `Retry-After` seconds.",
}


@dataclass(frozen=True)
class PathParam:
    name: str
    schema: dict[str, Any]
    description: str = ""
    #: The router's regular expression for the segment, when it must not take what a
    #: static route beside it serves (``/v1/triggers/backtest`` is no trigger id).
    router_pattern: str | None = None


@dataclass(frozen=True)
class Route:
    """One operation: what the handler reads and answers, for routing and the document."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    path: str
    handler: Handler
    summary: str
    status: int = 200
    response: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    path_params: tuple[PathParam, ...] = ()
    auth: bool = True
    errors: tuple[int, ...] = ()
    tag: str = ""
    description: str = ""
    extra_responses: dict[int, str] = field(default_factory=dict)

    @property
    def operation_id(self) -> str:
        return self.handler.__name__

    @property
    def router_path(self) -> str:
        """The path as the aiohttp router matches it."""
        path = self.path
        for param in self.path_params:
            if param.router_pattern is not None:
                path = path.replace(f"{{{param.name}}}", f"{{{param.name}:{param.router_pattern}}}")
        return path


def _not_null(prop: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema: an absent parameter is how a query says null."""
    schema = {k: v for k, v in prop.items() if k != "title"}
    options = schema.get("anyOf")
    if isinstance(options, list):
        kept = [o for o in options if o != {"type": "null"}]
        if len(kept) == 1:
            del schema["anyOf"]
            schema.update(kept[0])
        else:
            schema["anyOf"] = kept
        if schema.get("default", 0) is None:
            del schema["default"]
    return schema


def _query_parameters(model: type[BaseModel], schemas: dict[str, Any]) -> list[dict[str, Any]]:
    """One parameter per field of a query model (flat models only)."""
    schema = model.model_json_schema(ref_template=REF, mode="validation")
    for name, definition in schema.get("$defs", {}).items():
        schemas.setdefault(name, definition)
    required = set(schema.get("required", ()))
    return [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": _not_null(prop),
        }
        for name, prop in schema["properties"].items()
    ]


def _operation(
    route: Route, refs: dict[Any, Any], error_ref: dict[str, Any], schemas: dict[str, Any]
) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    if route.response is not None:
        responses[str(route.status)] = {
            "description": "OK",
            "content": {"application/json": {"schema": refs[(route.response, "serialization")]}},
        }
    else:
        responses[str(route.status)] = {"description": "Done, no content."}
    codes = set(route.errors)
    if route.auth:
        codes.add(401)
    if route.body is not None:
        codes.update((400, 413, 422))
    if route.query is not None or route.path_params:
        codes.add(422)
    for code in sorted(codes):
        responses[str(code)] = {
            "description": ERRORS[code],
            "content": {"application/json": {"schema": error_ref}},
        }
    parameters: list[dict[str, Any]] = [
        {
            "name": p.name,
            "in": "path",
            "required": True,
            "schema": p.schema,
            **({"description": p.description} if p.description else {}),
        }
        for p in route.path_params
    ]
    if route.query is not None:
        parameters += _query_parameters(route.query, schemas)
    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "responses": responses,
    }
    if route.tag:
        operation["tags"] = [route.tag]
    if route.description:
        operation["description"] = route.description
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(route.body, "validation")]}},
        }
    operation["security"] = [{"bearer": []}] if route.auth else []
    return operation


def build_document(routes: Sequence[Route], *, title: str, version: str) -> dict[str, Any]:
    pairs: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorOut, "serialization")]
    for route in routes:
        if route.body is not None:
            pairs.append((route.body, "validation"))
        if route.response is not None:
            pairs.append((route.response, "serialization"))
    refs, defs = models_json_schema(pairs, ref_template=REF)
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    error_ref = refs[(ErrorOut, "serialization")]
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation = _operation(route, refs, error_ref, schemas)
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": (
                "Accounts, triggers, history, statistics and backtests of the ERC-8004 "
                "trigger service. Authenticate with `Authorization: Bearer <token>`, where "
                "the token is an access token from POST /v1/auth/login or an API key."
            ),
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A JWT access token or an API key (e8k_...).",
                }
            },
        },
    }
