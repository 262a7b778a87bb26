"""`python -m llsh_index ...` is the `llsh-index` command (where the console script is not on PATH)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
