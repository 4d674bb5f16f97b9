"""`python -m cassava.client ...` is `cassava predict ...` (the user's spelling)."""
import sys

from cassava.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
