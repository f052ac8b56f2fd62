"""``python -m protocol schema``: print the JSON Schema of every contract message.

Regenerate the checked-in copy with::

    .venv/bin/python -m protocol schema > docs/protocol.schema.json
"""

from __future__ import annotations

import argparse
import sys

from protocol.schema import contract_schema_text


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m protocol", description="PlateBridge wire contract tools")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("schema", help="print the JSON Schema of every contract message (docs/protocol.schema.json)")
    p.parse_args(sys.argv[1:] if argv is None else argv)
    sys.stdout.write(contract_schema_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
