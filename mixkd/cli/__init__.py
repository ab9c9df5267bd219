"""Layer 8, the command line: ``mixkd <command>``, one module per command and one error contract
(bad input: one line on stderr, exit 2). The top layer: may import every other layer.
"""
from .app import main  # noqa: F401
