"""Messages for the person at the terminal while a progress bar runs."""
import sys


def say(message: str) -> None:
    """Print to stderr above the progress bar (tqdm's own write), not through it."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)
