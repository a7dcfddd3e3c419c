"""The ``slidescope`` command. Each command gathers options and calls public functions."""

from __future__ import annotations

import logging
import sys

import typer

from ..errors import SlidescopeError
from ._schema import SchemaGroup

app = typer.Typer(
    cls=SchemaGroup,  # a command's --help gets the registries' choices (--backend) filled in
    name="slidescope",
    help="Whole-slide pathology: slides, tissue, exact-mpp tiles, embeddings, MIL and zero-shot.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output (-vv for debug)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors."),
) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True
    )


from . import _demo, _features, _mil, _run, _vlm, _wsi  # noqa: E402,F401  (registers the commands)


def main() -> None:
    """Entry point: run the app, turning slidescope errors into one clear line and exit code 2."""
    try:
        code = app(standalone_mode=False)  # click returns typer.Exit codes in this mode
        if isinstance(code, int) and code:
            sys.exit(code)
    except SlidescopeError as err:
        typer.secho(f"error: {type(err).__name__}: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except typer.Exit as err:
        sys.exit(err.exit_code)
    except Exception as err:  # click usage errors carry their own exit code
        import click

        # typer >= 0.25 raises the usage errors of its vendored click (typer._click), which are not
        # click.ClickException: recognise those by their public base class and their interface
        vendored = isinstance(err, getattr(typer, "TyperException", ())) and hasattr(err, "show")
        if isinstance(err, click.ClickException) or vendored:
            err.show()  # type: ignore[attr-defined]
            sys.exit(int(getattr(err, "exit_code", 2)))
        raise
