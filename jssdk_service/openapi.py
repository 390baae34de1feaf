"""The OpenAPI 3.1 document of the HTTP API, served at `GET /openapi.json`.

It describes every route the service registers, each error response with the one error schema,
and, when the admin API is on, the `/admin/*` routes with their bearer security. A test runs a
property-based fuzzer (schemathesis) against a live service with it, so it stays true: no request
gets a 5xx, and every response has a documented status, content type, headers and body.
"""

from __future__ import annotations

from typing import Any

from jssdk_service import __version__

JSON = "application/json"
_REQUEST_ID = {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_response(description: str, schema: dict[str, Any], **headers: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {**_REQUEST_ID, **headers},
        "content": {JSON: {"schema": schema}},
    }


def _error(description: str, *codes: str, **headers: dict[str, Any]) -> dict[str, Any]:
    """An error response: `error.code` is one of `codes` (or the router's own not_found)."""
    schema = {
        "allOf": [
            _ref("Error"),
            {"properties": {"error": {"properties": {"code": {"enum": list(codes)}}}}},
        ]
    }
    return _json_response(description, schema, **headers)


def _string(**keywords: Any) -> dict[str, Any]:
    return {"type": "string", **keywords}


def _object(properties: dict[str, Any], *, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """A closed object whose properties are all required except `optional`."""
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        "additionalProperties": False,
    }


_NULLABLE_NUMBER = {"type": ["number", "null"]}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "properties": {
            "error": _object({"code": _string(pattern="^[a-z_]+$"), "message": _string(minLength=1)}),
        },
        "required": ["error"],
        "additionalProperties": False,
    },
    "Config": _object(
        {
            "appId": _string(),
            "timestamp": {"type": "integer"},
            "nonceStr": _string(minLength=1),
            "signature": _string(pattern="^[0-9a-f]{40}$"),
            "jsApiList": {"type": "array", "items": _string()},
            "openTagList": {"type": "array", "items": _string()},
        },
        optional=("openTagList",),
    ),
    "Share": _object(
        {
            "config": _ref("Config"),
            "appMessage": _object({"title": _string(), "desc": _string(), "link": _string(), "imgUrl": _string()}),
            "timeline": _object({"title": _string(), "link": _string(), "imgUrl": _string()}),
        }
    ),
    "ShareFields": {
        "type": "object",
        "properties": {"title": _string(), "desc": _string(), "link": _string(), "imgUrl": _string()},
        "description": "Per-page overrides, merged over the account's share rules",
    },
    "SignatureRequest": {
        "type": "object",
        "properties": {"url": _string(description="The page URL, without its #fragment"), "app": _string()},
        "required": ["url"],
        "example": {"url": "https://example.com/p?a=1"},
    },
    "ShareRequest": {
        "type": "object",
        "properties": {
            "url": _string(),
            "app": _string(),
            "share": _ref("ShareFields"),
            "page": _string(description="The page the card is for when it is not the signed url (iOS, SPA)"),
        },
        "required": ["url"],
        "example": {"url": "https://example.com/p?a=1", "share": {"title": "A title"}},
    },
    "Evidence": {
        "type": "object",
        "description": "What the page passed to wx.config and what WeChat answered; only url is required",
        "properties": {
            "url": _string(description="The page's location.href"),
            "landingUrl": _string(),
            "appId": _string(),
            "signature": _string(),
            "nonceStr": _string(),
            "timestamp": {"type": ["integer", "string"]},
            "userAgent": _string(),
            "errMsg": _string(),
        },
        "required": ["url"],
        "additionalProperties": False,
        "example": {"url": "https://example.com/p", "errMsg": "config:invalid signature"},
    },
    "Report": {"allOf": [_ref("Evidence"), {"required": ["errMsg"]}]},
    "Findings": _object(
        {
            "findings": {
                "type": "array",
                "items": _object(
                    {
                        "code": _string(pattern="^[a-z_]+$"),
                        "severity": {"enum": ["error", "warning", "info", "ok"]},
                        "message": _string(),
                    }
                ),
            }
        }
    ),
    "Health": _object({"status": {"const": "ok"}}),
    "Readiness": _object(
        {
            "status": {"enum": ["ready", "unready", "draining"]},
            "ready": {"type": "integer", "minimum": 0, "description": "Accounts that may sign now"},
            "total": {"type": "integer", "minimum": 0, "description": "Accounts configured"},
            "accounts": {
                "description": "The accounts that may not sign now (at most 100), or with ?verbose=1 every account",
                "type": "array",
                "items": _object(
                    {
                        "app": _string(),
                        "appId": _string(),
                        "ready": {"type": "boolean"},
                        "reason": _string(),
                        "ticketExpiresIn": _NULLABLE_NUMBER,
                        "errcode": {"type": "integer"},
                        "fix": _string(),
                        "retryIn": {"type": "number"},
                    },
                    optional=("errcode", "fix", "retryIn"),
                ),
            },
            "accountsListed": _string(),
            "upstream": _object(
                {
                    "inFlight": {"type": "integer", "minimum": 0},
                    "waiting": {"type": "integer", "minimum": 0},
                    "concurrency": {"type": "integer", "minimum": 1},
                }
            ),
            "cache": {
                "type": "object",
                "properties": {"backend": {"enum": ["memory", "redis"]}, "ok": {"type": "boolean"}},
                "required": ["backend", "ok"],
            },
            "degraded": _string(),
        },
        optional=("degraded", "accountsListed"),
    ),
    "Lifetime": _object(
        {
            "ageSeconds": {**_NULLABLE_NUMBER, "description": "Since WeChat issued it; null when none is held"},
            "expiresIn": {**_NULLABLE_NUMBER, "description": "Seconds left; null when none is held"},
        }
    ),
    "AdminApps": _object(
        {
            "apps": {
                "type": "array",
                "items": _object(
                    {
                        "app": _string(),
                        "appId": _string(),
                        "tokenApi": {"enum": ["stable", "classic"]},
                        "ready": {"type": "boolean"},
                        "reason": _string(),
                        "token": _ref("Lifetime"),
                        "ticket": _ref("Lifetime"),
                        "lastRefresh": {"type": ["string", "null"], "format": "date-time"},
                        "lastError": {"type": ["string", "null"]},
                        "errcode": {"type": ["integer", "null"]},
                        "fix": {"type": ["string", "null"]},
                        "upstreamCallsToday": {
                            "type": "object",
                            "additionalProperties": {"type": "integer", "minimum": 0},
                            "description": "Calls to each WeChat API since midnight China time, across the fleet",
                        },
                        "forcedTokenRefreshesToday": {"type": "integer", "minimum": 0},
                    }
                ),
            }
        }
    ),
    "AdminRefresh": _object(
        {
            "app": _string(),
            "appId": _string(),
            "tokenRefreshed": {"type": "boolean"},
            "ticket": _object(
                {
                    "fingerprint": _string(pattern="^[0-9a-f]{8}$", description="A digest, never the ticket"),
                    "expiresIn": {"type": "number"},
                }
            ),
        }
    ),
}

_URL = {
    "name": "url",
    "in": "query",
    "required": True,
    "description": "The page URL as the browser has it, `encodeURIComponent(location.href.split('#')[0])`",
    "schema": _string(),
    "example": "https://example.com/p?a=1",
}
_APP = {
    "name": "app",
    "in": "query",
    "description": "The account's appId or name; may be left out when one account is configured",
    "schema": _string(),
}

_SIGNING_ERRORS = {
    "400": _error("The URL is missing or cannot be signed", "invalid_url"),
    "403": _error("The URL's host is not a JS secure domain of the account", "host_not_allowed"),
    "404": _error("No account is configured as `app`", "unknown_app"),
    "503": _error(
        "No valid ticket in time, and WeChat is unreachable or refuses; Retry-After says when to ask again",
        "upstream_unavailable",
        "upstream_rejected",
        **{"Retry-After": {"schema": {"type": "integer", "minimum": 1}}},
    ),
}
_BODY_ERRORS = {
    "400": _error(
        "The body, the URL or a share override is malformed", "invalid_request", "invalid_url", "invalid_share"
    ),
    "403": _error("The URL's or the share link's host is not a JS secure domain of the account", "host_not_allowed"),
    "413": _error("The body is larger than 64 KiB", "payload_too_large"),
}
_PREFLIGHT = {
    "summary": "CORS preflight for the POST form",
    "description": "Pages on the account's JS secure domains get Access-Control-Allow-* headers for their origin.",
    "responses": {"204": {"description": "Preflight answered", "headers": _REQUEST_ID}},
}


def _asset(summary: str, content_type: str, parameters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A static file with an ETag: 200 with it, or 304 when If-None-Match names its current version."""
    headers = {**_REQUEST_ID, "ETag": {"schema": _string()}, "Cache-Control": {"schema": _string()}}
    return {
        "get": {
            "summary": summary,
            "parameters": parameters or [],
            "responses": {
                "200": {"description": summary, "headers": headers, "content": {content_type: {"schema": _string()}}},
                "304": {"description": "The browser's copy is current", "headers": headers},
            },
        }
    }


def _doctor_path(summary: str, body: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref(body)}}},
            "responses": {
                "200": _json_response("The findings, the worst first", _ref("Findings")),
                "400": _error("The body, a URL or a field is malformed", "invalid_request", "invalid_url"),
                "413": _error("The body is larger than 64 KiB", "payload_too_large"),
            },
        },
        "options": _PREFLIGHT,
    }


def _signing_path(summary: str, answer: str, body: str) -> dict[str, Any]:
    ok = _json_response(f"The {summary}", _ref(answer))
    return {
        "get": {
            "summary": summary,
            "parameters": [_URL, _APP],
            "responses": {"200": ok, **_SIGNING_ERRORS},
        },
        "post": {
            "summary": f"{summary} (JSON body)",
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref(body)}}},
            "responses": {"200": ok, **_SIGNING_ERRORS, **_BODY_ERRORS},
        },
        "options": _PREFLIGHT,
    }


_ADMIN_PATHS: dict[str, Any] = {
    "/admin/apps": {
        "get": {
            "summary": "Every account's credentials: ages and seconds left, last refresh and error, calls today",
            "security": [{"adminBearer": []}],
            "responses": {
                "200": _json_response("Each account's state; never a credential value", _ref("AdminApps")),
                "401": _error("No valid bearer token", "unauthorized", **{"WWW-Authenticate": {"schema": _string()}}),
            },
        }
    },
    "/admin/apps/{app}/refresh": {
        "post": {
            "summary": "A new jsapi_ticket now (with token=1, a new access_token first)",
            "description": "A forced stable token uses WeChat's force_refresh: 20 a day, 30 s apart, kept by the "
            "service (429 past either, without calling WeChat).",
            "security": [{"adminBearer": []}],
            "parameters": [
                {
                    "name": "app",
                    "in": "path",
                    "required": True,
                    "schema": _string(),
                    "example": "main",
                    "description": "The account's appId or name",
                },
                {
                    "name": "token",
                    "in": "query",
                    "schema": {"enum": ["0", "1", "true", "false"]},
                    "description": "Also replace the access_token",
                },
            ],
            "responses": {
                "200": _json_response("The new ticket's fingerprint and lifetime", _ref("AdminRefresh")),
                "400": _error("token is not 1 or 0", "invalid_request"),
                "401": _error("No valid bearer token", "unauthorized", **{"WWW-Authenticate": {"schema": _string()}}),
                "404": _error("No account is configured as `app`", "unknown_app", "not_found"),
                "429": _error(
                    "WeChat's force_refresh limits: the message says when the next is allowed",
                    "refresh_limited",
                    **{"Retry-After": {"schema": {"type": "integer"}}},
                ),
                "503": _error("WeChat is unreachable or refuses", "upstream_unavailable", "upstream_rejected"),
            },
        }
    },
}


def openapi_document(*, admin: bool, demo: bool) -> dict[str, Any]:
    """The document of the routes the service serves: `/admin/*` only when `admin`, `/demo` only when `demo`."""
    paths: dict[str, Any] = {
        "/v1/signature": _signing_path("wx.config object for a page", "Config", "SignatureRequest"),
        "/v1/share": _signing_path("wx.config object and the two share payloads", "Share", "ShareRequest"),
        "/v1/jssdk-share.js": _asset(
            "The page helper script",
            "text/javascript",
            [{"name": "v", "in": "query", "schema": _string(), "description": "Its ETag: cached for a year"}],
        ),
        "/v1/doctor": _doctor_path("Why WeChat refused a wx.config", "Evidence"),
        "/v1/report": _doctor_path("A page's wx.config failure: kept, counted, diagnosed", "Report"),
        "/healthz": {
            "get": {
                "summary": "200 while the process runs",
                "responses": {"200": _json_response("Alive", _ref("Health"))},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Whether every account has a valid ticket",
                "parameters": [
                    {
                        "name": "verbose",
                        "in": "query",
                        "description": "1 lists every account, ready or not",
                        "schema": {"enum": ["0", "1"]},
                    }
                ],
                "responses": {
                    "200": _json_response("Every account can sign", _ref("Readiness")),
                    "503": _json_response(
                        "Some account cannot sign (each listed says why), or the service is stopping",
                        _ref("Readiness"),
                    ),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text format)",
                "responses": {
                    "200": {
                        "description": "The metrics of every process of the service",
                        "headers": _REQUEST_ID,
                        "content": {"text/plain": {"schema": _string()}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": _json_response("The OpenAPI document", {"type": "object"})},
            }
        },
    }
    components: dict[str, Any] = {
        "schemas": SCHEMAS,
        "headers": {
            "X-Request-Id": {
                "description": "The request's id: the caller's X-Request-Id when short and safe, else a new one",
                "required": True,
                "schema": _string(pattern="^[A-Za-z0-9._:=+-]{1,64}$"),
            }
        },
    }
    if demo:
        paths["/demo"] = _asset("The sandbox's demo page", "text/html")
        paths["/demo/sandbox-wx.js"] = _asset("The demo page's stand-in for jweixin", "text/javascript")
    if admin:
        paths.update(_ADMIN_PATHS)
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
