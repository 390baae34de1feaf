"""The endpoint wrapper: what every route shares, and how routes are declared and installed.

Each `Route` names its handler, what it reads (query, body) and what it answers (shapes, statuses,
errors); `install_routes` registers the handlers wrapped in `_endpoint`, which gives every answer
a request id, CORS headers for allowed origins, metrics, and renders every error, from anywhere
below, as `{"error": {"code", "message"}}` with the status from `errors.STATUS`. The same routes
feed the OpenAPI document (`openapi.py`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

import msgspec
from aiohttp import web

from jssdk_service.errors import (
    InvalidRequest,
    JssdkError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestError,
    kind_of,
)
from jssdk_service.keys import ACCOUNT, SIGNERS, Lifecycle
from jssdk_service.logs import REQUEST_ID_HEADER, log_access, request_id_for
from jssdk_service.metrics import UNMATCHED_ROUTE, route_stats
from jssdk_service.pageurl import host_allowed, parse_page_url
from jssdk_service.shapes import ErrorBody, ErrorDetail, encode

log = logging.getLogger("jssdk_service.web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

JSON = "application/json"
JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}
NO_STORE = {**JSON_HEADERS, "Cache-Control": "no-store"}
_PREFLIGHT = {"Access-Control-Allow-Methods": "GET, POST", "Access-Control-Allow-Headers": "Content-Type",
              "Access-Control-Max-Age": "600"}  # fmt: skip
_FLAGS = {"1": True, "true": True, "0": False, "false": False}
# aiohttp's own refusals, as the errors of our tree they are.
_AIOHTTP_ERRORS: dict[int, type[RequestError]] = {404: NotFound, 413: PayloadTooLarge}


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """One documented response: its status, and a JSON `shape` or another `media` type."""

    status: int
    description: str
    shape: type[msgspec.Struct] | None = None
    media: str = JSON
    headers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """An endpoint: the router registers `handler`; the OpenAPI document describes the rest.

    `query` is read by hand (the hot path) and documented from its shape; `body` is what the
    handler decodes with `shapes.decode_body`; `errors` are the classes it may raise. A POST route
    for pages (not behind the admin bearer) also answers the CORS preflight (OPTIONS) on its path.
    """

    method: str
    path: str
    handler: Handler
    summary: str
    answers: tuple[Answer, ...]
    description: str = ""
    query: type[msgspec.Struct] | None = None
    body: type[msgspec.Struct] | None = None
    errors: tuple[type[JssdkError], ...] = ()
    bearer: bool = False
    pages: bool = True
    """Called from pages (a POST then answers the CORS preflight too); False for WeChat's pushes."""

    @property
    def preflight(self) -> bool:
        return self.method == "POST" and self.pages and not self.bearer


def json_response(body: msgspec.Struct, *, status: int = 200, headers: dict[str, str] = NO_STORE) -> web.Response:
    """A JSON answer encoded from its shape; `headers` carry the Content-Type (`JSON_HEADERS` or `NO_STORE`)."""
    return web.Response(body=encode(body), status=status, headers=headers)


def error_response(request: web.Request, exc: Exception) -> web.StreamResponse:
    """`exc` as the JSON error the client sees: our errors with their status, aiohttp's mapped to ours."""
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            return exc
        exc = _AIOHTTP_ERRORS.get(exc.status, InvalidRequest)(exc.reason)
    if not isinstance(exc, JssdkError):
        log.error("%s %s failed", request.method, request.path, exc_info=exc)
        exc = JssdkError("the service failed; see its log")
    kind = kind_of(exc)
    if kind.status >= 500:
        log.warning("%s %s -> %d %s: %s", request.method, request.path, kind.status, kind.code, exc.message)
    headers = exc.headers()
    body = ErrorBody(error=ErrorDetail(code=kind.code, message=exc.message))
    return json_response(body, status=kind.status, headers={**NO_STORE, **headers} if headers else NO_STORE)


def flag(value: str, name: str) -> bool:
    """A yes/no query parameter (`shapes.Flag`); `InvalidRequest` naming it for anything else."""
    answer = _FLAGS.get(value.lower())
    if answer is None:
        raise InvalidRequest(f"{name} must be 1 or 0 (true or false)")
    return answer


async def preflight(request: web.Request) -> web.Response:
    """CORS preflight for the POST forms: 204; the endpoint wrapper adds the headers for allowed origins."""
    return web.Response(status=204)


def install_routes(
    app: web.Application, routes: list[Route], *, lifecycle: Lifecycle, access_log: bool, prefix: str = ""
) -> None:
    """Register every route wrapped in `_endpoint` (with a preflight for each POST), then a catch-all
    answering 404 and 405. `prefix` is where a sub-application is mounted: route paths include it.

    Errors are rendered by a wrapper rather than a middleware: aiohttp runs two extra coroutine
    layers per request once any middleware exists, and that shows on /v1/signature's throughput.
    """
    methods: dict[str, set[str]] = {}
    for route in routes:
        entries = [(route.method, route.handler)]
        if route.preflight:
            entries.append(("OPTIONS", preflight))
        for method, handler in entries:
            wrapped = _endpoint(handler, route.path, lifecycle, access_log=access_log)
            app.router.add_route(method, route.path.removeprefix(prefix), wrapped)
            methods.setdefault(route.path, set()).add(method)

    async def no_route(request: web.Request) -> web.StreamResponse:
        allowed = methods.get(request.path)
        if allowed is None:
            raise NotFound("Not Found")
        raise MethodNotAllowed("Method Not Allowed", allowed=tuple(sorted(allowed)))

    wrapped = _endpoint(no_route, UNMATCHED_ROUTE, lifecycle, access_log=access_log)
    app.router.add_route("*", "/{path:.*}", wrapped)


def _endpoint(handler: Handler, route: str, lifecycle: Lifecycle, *, access_log: bool) -> Handler:
    """`handler` with errors rendered as JSON, CORS headers for allowed origins, a request id, and metrics.

    While the process drains (after SIGTERM), every answer closes its connection: a client on a
    keep-alive connection gets its answer, then opens its next connection elsewhere.

    `route` is the registered path: the label of the request's metrics and its access log line.
    """
    count = route_stats(route).count
    clock = time.perf_counter

    async def endpoint(request: web.Request) -> web.StreamResponse:
        started = clock()
        request_id = request_id_for(request.headers.get(REQUEST_ID_HEADER))
        try:
            response = await handler(request)
        except Exception as exc:  # every failure becomes a JSON error, never a traceback
            response = error_response(request, exc)
        if "Origin" in request.headers and request.path.startswith("/v1/"):
            _add_cors(request, response)
        response.headers[REQUEST_ID_HEADER] = request_id
        if lifecycle.draining:
            response.force_close()
        elapsed = clock() - started
        count(response.status, elapsed)
        if access_log:
            log_access(request, route, response.status, elapsed)
        return response

    return endpoint


def _add_cors(request: web.Request, response: web.StreamResponse) -> None:
    """CORS headers for an origin on the named account's domains (any account's if none is named)."""
    account = request.get(ACCOUNT)
    domains = account.allowed_hosts if account else request.app[SIGNERS].keys()
    response.headers.update(cors_headers(request.headers["Origin"], domains, request.method))


def cors_headers(origin: str, domains: Collection[str], method: str) -> dict[str, str]:
    """`Access-Control-Allow-Origin` for `origin` when it is a page origin on `domains`; none otherwise."""
    try:
        page = parse_page_url(origin)
    except JssdkError:
        return {}
    if page.raw.rstrip("/") != origin.rstrip("/") or not host_allowed(page.host, domains):
        return {}
    headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if method == "OPTIONS":
        headers.update(_PREFLIGHT)
    return headers
