"""``python -m runner.mock``: the simulated provider without the rest of the CLI."""

import argparse

from .cli import add_arguments, main

parser = argparse.ArgumentParser(prog="python -m runner.mock", description=__doc__)
add_arguments(parser)
raise SystemExit(main(parser.parse_args()))
