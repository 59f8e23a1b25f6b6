"""``python -m hf_distill support-table``: print the README's table of supported setting combinations."""

from __future__ import annotations

import sys

from .composition import support_table


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["support-table"]:
        print("usage: python -m hf_distill support-table", file=sys.stderr)
        return 2
    print(support_table(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
