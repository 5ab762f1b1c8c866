"""GET /api/openapi.json (contract: Operations): a valid OpenAPI 3.1 document of every /api route,
and a real fuzzer (Schemathesis, its command line) run against a live `gpuqueue web` finds no
server error and no answer that the document does not describe."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator

from harness.children import Child
from harness.commands import WebChild, WorkerChild
from queueing import db
from tests.integration.web_support import User, make_user, web_settings
from web.app import create_app

# Bounded: few examples per operation and a budget for the whole run, well within 60 s wall.
FUZZ_SECONDS = 30
FUZZ_EXAMPLES = 10
FUZZ_SEED = 15
CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance"


@pytest.fixture(scope="module")
async def fuzz_user(module_database_url: str) -> User:
    async with db.make_pool(module_database_url, "gpuqueue-test", min_size=1, max_size=2) as pool:
        return await make_user(pool, "fuzzer")


async def served_document(web: WebChild, user: User) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{web.base_url}/api/openapi.json", headers=user.headers) as response,
    ):
        assert response.status == 200, await response.text()
        assert response.content_type == "application/json"
        document: dict[str, Any] = await response.json()
        return document


def served_routes() -> set[tuple[str, str]]:
    """(method, path) of every route of the app under /api, and /healthz (HEAD, which aiohttp
    adds to each GET, is left out)."""
    app = create_app(web_settings(), "postgresql://unused")
    routes = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if (path.startswith("/api/") or path == "/healthz") and route.method != "HEAD":
            routes.add((route.method.lower(), path))
    return routes


async def test_the_document_is_valid_openapi_3_1_and_describes_every_api_route(
    web: WebChild, fuzz_user: User
) -> None:
    """openapi-spec-validator accepts it; its operations are exactly the app's /api routes and
    /healthz, each /api one under the bearer scheme, and every error answer is the error shape."""
    document = await served_document(web, fuzz_user)
    OpenAPIV31SpecValidator(document).validate()
    assert document["openapi"].startswith("3.1")
    documented = {
        (method, path)
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert documented == served_routes()
    assert document["security"] == [{"bearer": []}]
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert document["paths"]["/healthz"]["get"]["security"] == []
    error_ref = "#/components/schemas/Error"
    for name, answer in document["components"]["responses"].items():
        schema = answer["content"]["application/json"]["schema"]
        assert schema == {"$ref": error_ref}, name


async def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(
    web: WebChild, module_database_url: str, fuzz_user: User, tmp_path: Path
) -> None:
    """Schemathesis's own phases (examples, coverage, fuzzing, and stateful sequences along the
    document's links: a conversation, its jobs, their cancel, move and image) against the live
    server as a user, with a stub worker running the jobs it submits, so answers show jobs in
    every state; exit 0 means no check failed on any case it sent."""
    document = await served_document(web, fuzz_user)
    served = tmp_path / "openapi.json"  # from a file, so that it fuzzes its own route too
    served.write_text(json.dumps(document))
    argv = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        str(served),
        "--url",
        web.base_url,
        "--header",
        f"Authorization: Bearer {fuzz_user.token}",
        "--checks",
        CHECKS,
        "--max-examples",
        str(FUZZ_EXAMPLES),
        "--max-time",
        str(FUZZ_SECONDS),
        "--seed",
        str(FUZZ_SEED),
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--no-color",
        "--output-truncate",
        "false",
    ]
    worker = WorkerChild(
        module_database_url,
        tmp_path / "worker.log",
        device="cpu",
        env={"GPUQUEUE_STUB_DELAY": "0.05", "GPUQUEUE_GPU_LOCK_DIR": str(tmp_path / "locks")},
    )
    try:
        fuzzer = Child(argv, tmp_path / "schemathesis.log")
        try:
            code = await fuzzer.wait(within=FUZZ_SECONDS + 25)
        finally:
            if fuzzer.alive():
                await fuzzer.kill()
    finally:
        await worker.stop()
    assert code == 0, fuzzer.log_tail(200)
    operations = sum(len(set(item) - {"parameters"}) for item in document["paths"].values())
    assert f"Tested: {operations}" in fuzzer.log(), fuzzer.log_tail(40)
    assert web.alive()
