"""jssdk-service: WeChat JS-SDK signatures and share payloads, with credentials kept right."""

__version__ = "0.1.0"
