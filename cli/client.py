"""`python -m cassava.client ...` is `cassava predict ...` (the user's spelling)."""
import sys

from cassava.shared.client.predict import main

if __name__ == "__main__":
    sys.exit(main())
