"""The ``kato`` command line (typer + rich): ``kato --help``."""
