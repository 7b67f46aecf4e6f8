"""app/openapi.py: the document is generated from the routes, its enums from core."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.main import create_app
from app.openapi import Schema, errors, json_body, obj, openapi_document, operation
from core.columntypes import ColumnType
from core.eventkinds import EventKind
from core.statuses import VISIBLE_UPLOAD_STATUSES, MessageStatus


async def bare(request: Request) -> Response:
    return Response()


def schemas() -> dict[str, Any]:
    document: dict[str, Any] = create_app().state.openapi
    return document["components"]["schemas"]


def test_enums_are_the_vocabularies() -> None:
    found = schemas()
    upload = found["Upload"]["properties"]
    assert upload["status"]["enum"] == list(VISIBLE_UPLOAD_STATUSES)
    column = found["UploadResult"]["properties"]["columns"]["items"]["properties"]
    assert column["type"]["enum"] == list(ColumnType)
    message = found["MessageList"]["properties"]["messages"]["items"]["properties"]
    assert message["status"]["enum"] == list(MessageStatus)


def test_event_streams_name_their_event_kinds() -> None:
    paths = create_app().state.openapi["paths"]
    described = paths["/events"]["get"]["responses"]["200"]["description"]
    assert all(kind in described for kind in EventKind)


def test_path_parameters_come_from_the_path_and_schemas_are_hoisted() -> None:
    thing = Schema("Thing", obj(["id"], {"id": {"type": "string"}}))
    endpoint = operation("A thing", {"200": json_body(thing)} | errors(404))(bare)
    document = openapi_document([Route("/things/{thing_id}", endpoint, methods=["GET"])])
    op = document["paths"]["/things/{thing_id}"]["get"]
    assert op["parameters"] == [
        {"name": "thing_id", "in": "path", "required": True, "schema": {"type": "string"}}
    ]
    body = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/Thing"}
    assert set(document["components"]["schemas"]) == {"Thing", "Error"}


def test_an_undescribed_route_fails_at_start_up() -> None:
    async def undescribed(request: Request) -> Response:
        return Response()

    with pytest.raises(LookupError, match="/nowhere"):
        openapi_document([Route("/nowhere", undescribed, methods=["GET"])])


def test_two_schemas_with_one_name_are_refused() -> None:
    first = operation("a", {"200": json_body(Schema("Same", {"type": "string"}))})(bare)

    async def other(request: Request) -> Response:
        return Response()

    second = operation("b", {"200": json_body(Schema("Same", {"type": "integer"}))})(other)
    with pytest.raises(ValueError, match="Same"):
        openapi_document([Route("/a", first), Route("/b", second)])
