"""``vla-gym label``: a typer command, registered on the main app with
``app.command()(label)``. A plain function too: its defaults are real values."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()


def label(
    queries: Annotated[Path, typer.Option(
        "--queries", help="Query set directory (queries.json + clips/).")],
    db: Annotated[Path, typer.Option(
        "--db", help="SQLite file for the labels (created if new; reopen to resume).")],
    port: Annotated[int, typer.Option("--port", min=0, max=65535,
                                      help="Port (0: any free port).")] = 8765,
    host: Annotated[str, typer.Option(
        "--host", help="Address to bind; anything but localhost exposes the page.")
    ] = "127.0.0.1",
    env: Annotated[str | None, typer.Option(
        "--env", help="Refuse a query set made for another env id.")] = None,
    open_browser: Annotated[bool, typer.Option(
        "--open/--no-open", help="Open the page in a browser.")] = False,
) -> None:
    """Serve a local web page where people label preference queries (left / right / equal)."""
    from vla_gym.training.label_store import LabelError
    from vla_gym.training.labelling.server import serve_labelling
    from vla_gym.training.query_files import QueryFileError

    try:
        serve_labelling(queries, db, host=host, port=port, env_id=env,
                        open_browser=open_browser, log=console.print)
    except QueryFileError as exc:
        raise typer.BadParameter(str(exc), param_hint="--queries") from None
    except LabelError as exc:
        raise typer.BadParameter(str(exc), param_hint="--db") from None
    except OSError as exc:
        raise typer.BadParameter(f"cannot listen on {host}:{port}: {exc}",
                                 param_hint="--port") from None
