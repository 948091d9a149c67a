"""The OpenAPI document: it lists exactly the service's routes, and no input
schemathesis generates from it makes the service fail (a 500) or answer
outside it."""

from __future__ import annotations

from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error

import stride
from stride.query._settings import QuerySettings
from stride.query.app import create_app
from stride.query.openapi import OPERATIONS, openapi_document

from .conftest import StrideUp, wait_rows

EXAMPLES = 25


def test_the_document_lists_exactly_the_services_routes() -> None:
    app = create_app(QuerySettings(store_url="chdb:///nowhere"))  # not started: opens nothing
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert routes == {(op.method, op.path) for op in OPERATIONS}


def test_the_service_serves_the_document(stack: StrideUp) -> None:
    served = stride.Api(stack.http_url).get("/api/v1/openapi.json")
    assert served == openapi_document()
    assert served["openapi"] == "3.1.0" and "/api/v1/runs/{entity}/{project}" in served["paths"]


@pytest.fixture(scope="module")
def logged_run(stack: StrideUp, tmp_path_factory: pytest.TempPathFactory) -> str:
    with stride.init(
        project="fuzz", id="target", config={"lr": 0.1}, tags=["a"],
        settings=stack.settings(tmp_path_factory.mktemp("spool")),
    ) as run:  # fmt: skip
        for step in range(300):
            run.log({"loss": 1.0 / (step + 1), "acc": step / 300.0})
    wait_rows(stride.Api(stack.http_url), run.path, 300)
    return run.path


def _schema(stack: StrideUp, **pinned: str) -> Any:
    """The document as schemathesis reads it; ``pinned`` path parameters always take
    the given value (their schema narrowed to it)."""
    document = openapi_document()
    for operations in document["paths"].values():
        for operation in operations.values():
            for param in operation["parameters"]:
                if param["in"] == "path" and param["name"] in pinned:
                    param["schema"] = {"type": "string", "enum": [pinned[param["name"]]]}
    schema = schemathesis.openapi.from_dict(document)
    schema.config.update(base_url=stack.http_url)
    return schema


def _fuzz(schema: Any, method: str, path: str) -> None:
    """Run ``EXAMPLES`` generated calls of one operation; none may get a 500."""
    strategy = schema[path][method.upper()].as_strategy()

    @hypothesis.given(case=strategy)
    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        database=None,
    )
    def call(case: Any) -> None:
        case.call_and_validate(checks=[not_a_server_error])

    call()


@pytest.mark.parametrize(("method", "path"), [(op.method, op.path) for op in OPERATIONS])
def test_no_generated_input_fails_the_service(stack: StrideUp, method: str, path: str) -> None:
    """Every parameter generated: mostly unknown runs (400s and 404s)."""
    _fuzz(_schema(stack), method, path)


@pytest.mark.parametrize(
    "path", [op.path for op in OPERATIONS if op.method == "get" and "{run_id}" in op.path]
)
def test_no_generated_read_of_a_real_run_fails_the_service(
    stack: StrideUp, logged_run: str, path: str
) -> None:
    """The reads of one real run, their query parameters generated."""
    entity, project, run_id = logged_run.split("/")
    _fuzz(_schema(stack, entity=entity, project=project, run_id=run_id), "get", path)
