"""Prometheus metrics: the names operators alert on. Only this module defines metrics."""

from __future__ import annotations

from prometheus_client import Counter

REPORTS = Counter("jssdk_reports_total", "wx.config failures reported by pages through /v1/report", ["app"])
