"""The sandbox's demo (`serve --sandbox` only): a page that uses the helper, signed by the sandbox.

GET  /demo                   the page
GET  /demo/sandbox-wx.js     its stand-in for WeChat's jweixin (the sandbox's tickets are not WeChat's)
"""

from __future__ import annotations

from aiohttp import web

from jssdk_service.pageside import Asset

_PAGE = Asset.load("demo.html", "text/html; charset=utf-8")
_STAND_IN = Asset.load("sandbox-wx.js", "text/javascript; charset=utf-8")


async def page(request: web.Request) -> web.Response:
    return _PAGE.response(request, "no-cache")


async def stand_in(request: web.Request) -> web.Response:
    return _STAND_IN.response(request, "no-cache")
