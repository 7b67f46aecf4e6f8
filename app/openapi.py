"""The OpenAPI 3.1 document (API.md "Conventions"), generated from the routes.

Each endpoint declares its operation beside its code with ``@operation(...)``;
``openapi_document`` walks the router as Starlette's ``SchemaGenerator`` does (which
reads YAML from docstrings instead), adds the path parameters of each path template,
and moves every named ``Schema`` it meets into ``components/schemas`` behind a
``$ref``. Schemas are Python values, so their enums come from core's vocabularies.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.routing import BaseRoute, Route

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])
Security = list[dict[str, list[str]]]

BEARER: Security = [{"bearer": []}, {"cookie": []}]
# EventSource cannot send headers: SSE endpoints also take ?token= (API.md).
SSE_AUTH: Security = [{"bearer": []}, {"cookie": []}, {"query": []}]
PUBLIC: Security = []

STRING: dict[str, Any] = {"type": "string"}
INTEGER: dict[str, Any] = {"type": "integer"}
TIME: dict[str, Any] = {"type": "string", "format": "date-time"}
_ATTRIBUTE = "__openapi_operation__"


@dataclass(frozen=True)
class Schema:
    """A named schema: written as a ``$ref``, defined once under components."""

    name: str
    body: dict[str, Any] = field(hash=False, compare=False)


def obj(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


def enum(values: Iterable[str]) -> dict[str, Any]:
    return {"enum": [str(v) for v in values]}


# API.md's error body; an upload's `result.warnings` items have the same shape.
PROBLEM: dict[str, Any] = obj(
    ["code", "message"], {"code": STRING, "message": STRING, "details": {"type": "object"}}
)
ERROR = Schema("Error", obj(["error"], {"error": PROBLEM}))


def content(media_type: str, schema: Schema | dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": schema}}}


def json_body(schema: Schema | dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return content("application/json", schema, description)


def errors(*statuses: int) -> dict[str, Any]:
    """Responses in API.md's error shape, one per status."""
    return {str(status): json_body(ERROR, "Error") for status in statuses}


def query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def paging() -> list[dict[str, Any]]:
    return [
        query("limit", {"type": "integer", "minimum": 1}),
        query("offset", {"type": "integer", "minimum": 0}),
    ]


def operation(
    summary: str,
    responses: dict[str, Any],
    *,
    security: Security = BEARER,
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
) -> Callable[[Endpoint], Endpoint]:
    """Describe the endpoint below for /openapi.json (its path parameters are added
    from the route's path; ``parameters`` are the others)."""
    described: dict[str, Any] = {"summary": summary, "responses": responses, "security": security}
    if parameters:
        described["parameters"] = parameters
    if body:
        described["requestBody"] = body

    def mark(endpoint: Endpoint) -> Endpoint:
        setattr(endpoint, _ATTRIBUTE, described)
        return endpoint

    return mark


def _path_parameters(path: str) -> list[dict[str, Any]]:
    names = re.findall(r"{(\w+)(?::\w+)?}", path)
    return [{"name": n, "in": "path", "required": True, "schema": STRING} for n in names]


class _Components:
    """The named schemas met so far; one name, one schema."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}
        self._owners: dict[str, Schema] = {}

    def hoist(self, value: Any) -> Any:
        """``value`` with each ``Schema`` replaced by a ``$ref``, its body kept here."""
        if isinstance(value, Schema):
            owner = self._owners.setdefault(value.name, value)
            if owner is not value:
                raise ValueError(f"two schemas are named {value.name!r}")
            if value.name not in self.schemas:
                self.schemas[value.name] = None  # taken before the body: it may recurse
                self.schemas[value.name] = self.hoist(value.body)
            return {"$ref": f"#/components/schemas/{value.name}"}
        if isinstance(value, dict):
            return {k: self.hoist(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.hoist(v) for v in value]
        return value


def openapi_document(routes: Iterable[BaseRoute]) -> dict[str, Any]:
    """The document for every route in the schema; a route without ``@operation`` is an
    error here (at start-up), not a hole in the document."""
    paths: dict[str, dict[str, Any]] = {}
    components = _Components()
    for route in routes:
        if not isinstance(route, Route) or not route.include_in_schema or not route.methods:
            continue
        described = getattr(route.endpoint, _ATTRIBUTE, None)
        if described is None:
            raise LookupError(f"{route.path} has no @operation for /openapi.json")
        described = components.hoist(described)
        parameters = _path_parameters(route.path) + described.get("parameters", [])
        if parameters:
            described = {**described, "parameters": parameters}
        for method in sorted(route.methods - {"HEAD"}):
            paths.setdefault(route.path, {})[method.lower()] = described
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Herald",
            "version": "0.1.0",
            "description": "See API.md for the SSE contract.",
        },
        "paths": paths,
        "components": {
            "schemas": components.schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": "herald_token"},
                "query": {"type": "apiKey", "in": "query", "name": "token"},
            },
        },
    }
