"""`collect` as a stand-alone command, for tests that signal a collection in a subprocess."""

import typer

from vla_gym.data.cli import collect

if __name__ == "__main__":
    typer.run(collect)
