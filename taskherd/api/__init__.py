"""The manager's HTTP JSON API (FastAPI): `taskherd.api.app.build_app(ctx, intake, manager)`, served by
`taskherd.actors.http_server.HttpServer`. Nothing is imported here: a worker pod uses only
`taskherd.api.probes` and boots without the API's routes."""
