"""The ``serve`` command (registered on ``feedback-hub`` by hub/cli.py)."""

from __future__ import annotations

import click


@click.command("serve")
@click.option("--host", default=None, help="Address to listen on [default: server.host].")
@click.option("--port", default=None, type=int, help="Port [default: server.port].")
@click.option("--print-openapi", is_flag=True, help="Print the OpenAPI document and exit.")
@click.pass_obj
def serve_command(c: object, host: str | None, port: int | None, print_openapi: bool) -> None:
    """Serve upstream intake (POST /v1/records, Open311), case progress, /metrics, /healthz."""
    import json

    import uvicorn

    from hub.server.app import create_app

    config = c.config  # type: ignore[attr-defined]
    app = create_app(config)
    if print_openapi:
        click.echo(json.dumps(app.openapi(), ensure_ascii=False, indent=2))
        return
    uvicorn.run(app, host=host or config.server.host, port=port or config.server.port,
                log_level="warning", access_log=False, server_header=False)
