"""The manager's HTTP JSON API (FastAPI): `build_app(ctx, intake, manager)`; served by `taskherd.actors.api.Api`."""

from taskherd.api.app import build_app

__all__ = ["build_app"]
