"""Class names in TFDS `cassava` label order, plus CropNet's extra `unknown` class."""

# TFDS `cassava` label order (ClassLabel names); CropNet appends `unknown` as class 5.
TFDS_CLASSES = ("cbb", "cbsd", "cgm", "cmd", "healthy")
CROPNET_CLASSES = TFDS_CLASSES + ("unknown",)

DISPLAY_NAMES = {
    "cbb": "Bacterial Blight",
    "cbsd": "Brown Streak Disease",
    "cgm": "Green Mite",
    "cmd": "Mosaic Disease",
    "healthy": "Healthy",
    "unknown": "Unknown",
}


def display_name(name: str) -> str:
    """Human name for a class id such as `cmd` (falls back to the id itself)."""
    return DISPLAY_NAMES.get(name, name)


def plain_name(name: str) -> str:
    """The name a farmer reads, e.g. `cmd` -> "Cassava Mosaic Disease" (the phone page's; falls back to the id)."""
    return f"Cassava {DISPLAY_NAMES[name]}" if name in TFDS_CLASSES[:4] else display_name(name)


def parse_class_list(text: str) -> tuple:
    """`cbb,cbsd,...` -> ('cbb', 'cbsd', ...); empty items are an error."""
    names = tuple(part.strip() for part in text.split(","))
    if not names or any(not n for n in names):
        raise ValueError(f"bad class list {text!r}: expected comma-separated names like cbb,cbsd,cgm")
    if len(set(names)) != len(names):
        raise ValueError(f"bad class list {text!r}: duplicate names")
    return names


def top_k(probabilities, class_names, k: int = 3) -> list:
    """The k most likely classes, best first: [(class id name, probability), ...]."""
    ranked = sorted(zip(class_names, (float(p) for p in probabilities)), key=lambda pair: pair[1], reverse=True)
    return ranked[:k]
