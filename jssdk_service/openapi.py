"""The OpenAPI 3.1 document, derived from the route table, the shapes and the error table.

Nothing here is written by hand beside the handlers: each operation comes from a `Route`, its
schemas from the msgspec shapes it reads and answers (`msgspec.json.schema_components`), its error
responses from the error classes it may raise and their `errors.STATUS` entries. A test runs a
property-based fuzzer (schemathesis) against a live service with it, checking requests (valid data
accepted, invalid data refused) as well as responses, so a drift between the two fails.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec

from jssdk_service import __version__
from jssdk_service.endpoint import JSON, Answer, Route
from jssdk_service.errors import STATUS, JssdkError
from jssdk_service.shapes import ErrorBody

_REF = "#/components/schemas/{name}"
_REQUEST_ID = {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}}
_HEADERS = {
    "Retry-After": {
        "description": "Seconds until asking again may succeed",
        "schema": {"type": "integer", "minimum": 1},
    },
    "WWW-Authenticate": {"schema": {"type": "string"}},
    "Allow": {"schema": {"type": "string"}},
    "ETag": {"schema": {"type": "string"}},
    "Cache-Control": {"schema": {"type": "string"}},
}
_PATH_PARAMETERS = {
    "app": {"description": "The account's appId or name", "schema": {"type": "string"}, "example": "main"},
    "component_appid": {"description": "The third-party platform's component_appid", "schema": {"type": "string"},
                        "example": "wx0000000000000c01"},
    "appid": {"description": "An authorizer's appId", "schema": {"type": "string"}, "example": "wxa00000000000a001"},
}  # fmt: skip
_PARAMETER = re.compile(r"{(\w+)}")


def openapi_document(routes: Sequence[Route]) -> dict[str, Any]:
    """The document of `routes`: one path item per path, one operation per method."""
    shapes = {route.body for route in routes} | {a.shape for route in routes for a in route.answers}
    queries = {route.query for route in routes}
    types = sorted((t for t in shapes | queries | {ErrorBody} if t is not None), key=lambda t: t.__name__)
    _, schemas = msgspec.json.schema_components(types, ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        item = paths.setdefault(route.path, {})
        item[route.method.lower()] = _operation(route, schemas)
        if route.preflight:
            item["options"] = _preflight()
    components: dict[str, Any] = {
        "schemas": {name: schema for name, schema in schemas.items() if name not in {q.__name__ for q in queries if q}},
        "headers": {
            "X-Request-Id": {
                "description": "The request's id: the caller's X-Request-Id when short and safe, else a new one",
                "required": True,
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:=+-]{1,64}$"},
            }
        },
    }
    if any(route.bearer for route in routes):
        components["securitySchemes"] = {"adminBearer": {"type": "http", "scheme": "bearer"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "jssdk-service",
            "version": __version__,
            "description": "WeChat JS-SDK wx.config signatures and share payloads. Errors are always "
            '{"error": {"code", "message"}}.',
        },
        "paths": paths,
        "components": components,
    }


def _operation(route: Route, schemas: dict[str, Any]) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": route.summary}
    if route.description:
        operation["description"] = route.description
    parameters = [_path_parameter(name) for name in _PARAMETER.findall(route.path)]
    if route.query is not None:
        parameters += _query_parameters(schemas[route.query.__name__])
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {"required": True, "content": {JSON: {"schema": _ref(route.body.__name__)}}}
    if route.bearer:
        operation["security"] = [{"adminBearer": []}]
    responses = {str(answer.status): _answer(answer) for answer in route.answers}
    responses.update(_errors(route.errors))
    operation["responses"] = responses
    return operation


def _answer(answer: Answer) -> dict[str, Any]:
    response: dict[str, Any] = {"description": answer.description, "headers": _headers(answer.headers)}
    if answer.status in (204, 304):
        return response
    if answer.shape is not None:
        schema: dict[str, Any] = _ref(answer.shape.__name__)
    else:
        schema = {"type": "object"} if answer.media == JSON else {"type": "string"}
    response["content"] = {answer.media: {"schema": schema}}
    return response


def _errors(classes: Sequence[type[JssdkError]]) -> dict[str, Any]:
    """One response per status: the error body with its possible codes, described by the classes' docstrings."""
    by_status: dict[int, list[type[JssdkError]]] = {}
    for cls in classes:
        by_status.setdefault(STATUS[cls].status, []).append(cls)
    responses = {}
    for status, group in sorted(by_status.items()):
        codes = sorted({STATUS[cls].code for cls in group})
        headers = sorted({header for cls in group for header in STATUS[cls].headers})
        schema = {"allOf": [_ref("ErrorBody"), {"properties": {"error": {"properties": {"code": {"enum": codes}}}}}]}
        responses[str(status)] = {
            "description": " / ".join(_first_line(cls) for cls in group),
            "headers": _headers(tuple(headers)),
            "content": {JSON: {"schema": schema}},
        }
    return responses


def _query_parameters(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """A query shape's fields as query parameters (an optional field's `null` is no value in a query)."""
    required = set(schema.get("required", ()))
    parameters = []
    for name, field in schema["properties"].items():
        field = {key: value for key, value in field.items() if key != "default"}
        choices = field.pop("anyOf", None)
        if choices is not None:
            field.update(next(choice for choice in choices if choice.get("type") != "null"))
        description = field.pop("description", None)
        parameter: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": field}
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters


def _path_parameter(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, **_PATH_PARAMETERS[name]}


def _preflight() -> dict[str, Any]:
    return {
        "summary": "CORS preflight for the POST form",
        "description": "Pages on the account's JS secure domains get Access-Control-Allow-* headers for their origin.",
        "responses": {"204": {"description": "Preflight answered", "headers": _REQUEST_ID}},
    }


def _headers(names: tuple[str, ...]) -> dict[str, Any]:
    return {**_REQUEST_ID, **{name: _HEADERS[name] for name in names}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(name=name)}


def _first_line(cls: type[JssdkError]) -> str:
    return (cls.__doc__ or cls.__name__).strip().splitlines()[0]
