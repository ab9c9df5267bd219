"""``mixkd select`` (work in progress)."""
from __future__ import annotations

import argparse

from .errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def main(args: argparse.Namespace) -> int:
    raise UsageError("mixkd select is not finished yet")
