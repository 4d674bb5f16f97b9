"""`python -m cassava.compare ...` is `cassava compare ...` (the user's "accuracy comparison script")."""
import sys

from cassava.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
