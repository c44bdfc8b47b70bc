"""Web service: FastAPI app screening uploaded chest X-rays, with a page at ``/`` (research use only)."""

from __future__ import annotations

from cxrlab.serve.app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]
