"""API.md as a client sees it: conventions that hold across every endpoint."""

from __future__ import annotations

import httpx
import jsonschema_rs
import pytest
import redis
from rq import Queue, SimpleWorker
from starlette.routing import Route

from core import settings
from tests.support.asgi import running_app, token

pytestmark = pytest.mark.anyio


def client_for(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/chat/messages", "POST"),
        ("DELETE", "/uploads", "GET, HEAD, POST"),
        ("PUT", "/uploads/x", "DELETE, GET, HEAD"),
        ("POST", "/events", "GET, HEAD"),
        ("GET", "/uploads/x/cancel", "POST"),
    ],
)
async def test_wrong_method_is_405_json_with_allow(method: str, path: str, allow: str) -> None:
    async with running_app() as app, client_for(app) as client:
        response = await client.request(method, path)
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert sorted(response.headers["allow"].split(", ")) == allow.split(", ")


async def test_unknown_path_is_404_json_and_page_still_served() -> None:
    headers = {"authorization": f"Bearer {token('contract')}"}
    async with running_app() as app, client_for(app) as client:
        missing = await client.get("/no/such/thing", headers=headers)
        page = await client.get("/")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")


async def test_openapi_lists_every_route_and_method() -> None:
    async with running_app() as app, client_for(app) as client:
        document = (await client.get("/openapi.json")).json()
    served = {
        (route.path, method.lower())
        for route in app.routes
        if isinstance(route, Route)
        and route.include_in_schema
        and route.methods
        and not route.path.startswith("/dev/")  # HERALD_DEV only
        for method in route.methods - {"HEAD"}
    }
    described = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert served == described


async def test_json_bodies_match_their_openapi_schemas(redis_client: redis.Redis) -> None:
    headers = {"authorization": f"Bearer {token('schema-user', org='schema-org')}"}
    async with running_app() as app, client_for(app) as client:
        document = (await client.get("/openapi.json")).json()

        def check(name: str, body: object) -> None:
            schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
            jsonschema_rs.validate(schema, body)

        posted = await client.post("/chat/messages", json={"message": "hi"}, headers=headers)
        check("ChatAccepted", posted.json())
        conversation = posted.json()["conversation_id"]
        check("ConversationList", (await client.get("/chat/conversations", headers=headers)).json())
        messages = await client.get(f"/chat/conversations/{conversation}/messages", headers=headers)
        check("MessageList", messages.json())
        upload = await client.post(
            "/uploads?filename=s.csv",
            content=b"n,word,day,at\n1,a,2024-01-01,2024-01-01T10:00:00Z\n2,b,2024-01-02,2024-01-01T11:00:00Z\n",
            headers={**headers, "content-type": "text/csv"},
        )
        check("UploadAccepted", upload.json())
        SimpleWorker(
            [Queue(settings.UPLOAD_QUEUE, connection=redis_client)], connection=redis_client
        ).work(burst=True)
        upload_id = upload.json()["upload_id"]
        one = (await client.get(f"/uploads/{upload_id}", headers=headers)).json()
        assert one["status"] == "completed"
        assert {c["type"] for c in one["result"]["columns"]} == {"int", "text", "date", "datetime"}
        check("Upload", one)
        check("UploadList", (await client.get("/uploads", headers=headers)).json())
        rows = (await client.get(f"/uploads/{upload_id}/rows", headers=headers)).json()
        check("Rows", rows)
        # Time stamps in rows are RFC 3339 in UTC, like created_at.
        assert [r["at"] for r in rows["rows"]] == ["2024-01-01T10:00:00Z", "2024-01-01T11:00:00Z"]
        assert one["created_at"].endswith("Z")
        check("Error", (await client.get("/uploads/nope", headers=headers)).json())
        Queue(settings.CHAT_QUEUE, connection=redis_client).empty()
