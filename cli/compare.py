"""`python -m cassava.compare ...` is `cassava compare ...` (the user's "accuracy comparison script")."""
import sys

from cassava.shared.evaluate.compare import main

if __name__ == "__main__":
    sys.exit(main())
