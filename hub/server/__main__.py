"""``python -m hub.server -c feedback-hub.yaml serve``: the serve command on its own."""

from __future__ import annotations

from hub.cli import cli
from hub.server.cli import serve_command

if "serve" not in cli.commands:
    cli.add_command(serve_command)

if __name__ == "__main__":
    cli.main(prog_name="feedback-hub")
