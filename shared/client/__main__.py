"""`python -m cassava.shared.client ...` is `cassava predict ...` (so is `python -m cassava.client`)."""
import sys

from cassava.shared.client.predict import main

if __name__ == "__main__":
    sys.exit(main())
