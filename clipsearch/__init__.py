"""The `clipsearch` command line; the library lives in the search, indexer and web packages."""


def main() -> None:
    """The console script's entry point. The command-line module is imported here, not at the
    script's top level: every decode worker runs the script's top level again (search/
    sandbox.py), and importing clipsearch.cli there cost each worker 0.38 s."""
    from clipsearch.cli import main as command_line

    command_line()
