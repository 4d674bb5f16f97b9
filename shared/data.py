"""Data sources for `--data`: a TFDS split, a folder with one sub-folder per class, image files, or the stand-in's
synthetic photos. Every source yields `Sample`s; images are decoded later, one at a time, so a bad file is
reported where it is used and never dropped silently.
"""
from __future__ import annotations

import dataclasses
import glob
import itertools
import sys
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

from .errors import BadImage, CassavaError
from .labels import CROPNET_CLASSES

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif"}


@dataclasses.dataclass
class Sample:
    name: str  # file path, or `tfds:<split>/<id>`
    label: Optional[str]  # class name, None when unknown
    source: object  # a path, encoded bytes or an RGB array: anything `preprocess()` accepts


def describe(data: Sequence[str]) -> str:
    return " ".join(str(d) for d in data)


def is_standin_data(data: Sequence[str]) -> bool:
    return any(str(d).startswith("standin") for d in data)


def load_samples(data, limit: Optional[int] = None) -> List[Sample]:
    """Resolve one or more DATA arguments into samples (first `limit`, classes interleaved)."""
    items = [data] if isinstance(data, (str, Path)) else list(data)
    if not items:
        raise CassavaError("--data: nothing given")
    samples: List[Sample] = []
    for item in items:
        samples.extend(_resolve(str(item), limit))
    if not samples:
        raise CassavaError(f"--data {describe(items)}: matches no images")
    return samples[:limit] if limit else samples


def _resolve(item: str, limit: Optional[int]) -> List[Sample]:
    if item.startswith("tfds:"):
        return list(itertools.islice(tfds_samples(item[len("tfds:"):]), limit))
    if item == "standin" or item.startswith("standin:"):
        from .cache import standin_dir
        from .synthetic import ensure_dataset

        split = item.partition(":")[2] or "validation"
        ensure_dataset(standin_dir() / "data")
        path = standin_dir() / "data" / split
        if not path.is_dir():
            raise CassavaError(f"--data {item}: no such stand-in split (train, validation)")
        return folder_samples(path)
    path = Path(item)
    if path.is_dir():
        return folder_samples(path)
    if path.is_file():
        return [Sample(str(path), None, path)]
    matches = sorted(p for p in glob.glob(item, recursive=True) if Path(p).is_file())
    if not matches:
        raise CassavaError(f"--data {item}: no such file, folder or TFDS split")
    return [Sample(p, None, Path(p)) for p in matches]


def _images_in(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def folder_samples(folder: Path, known_classes: Iterable[str] = CROPNET_CLASSES) -> List[Sample]:
    """A folder of class sub-folders (labelled; classes interleaved so `-n` sees all), or of plain images."""
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subfolders:
        return [Sample(str(p), None, p) for p in _images_in(folder)]
    known = set(known_classes)
    unknown = [p.name for p in subfolders if p.name not in known]
    if unknown:
        raise CassavaError(
            f"--data {folder}: sub-folder(s) {', '.join(unknown)} are not class names "
            f"(expected some of {', '.join(known_classes)})"
        )
    return _interleave([[Sample(str(p), sub.name, p) for p in _images_in(sub)] for sub in subfolders])


def _interleave(groups) -> list:
    """One from each group in turn (a class-balanced prefix), until every group is used up."""
    return [s for s in itertools.chain.from_iterable(itertools.zip_longest(*groups)) if s is not None]


def stratified_split(samples: Sequence[Sample], first: int, seed: int = 0):
    """-> (`first` samples, the rest): disjoint, each class in the same proportion in both (largest remainders),
    shuffled within each class by a fixed seed so that neither part is one source's files. Unlabelled images count
    as one class. Both parts keep the classes interleaved, like `folder_samples`."""
    import numpy as np

    first = max(0, min(first, len(samples)))
    by_class: dict = {}
    for sample in samples:
        by_class.setdefault(sample.label, []).append(sample)
    shares = {label: first * len(group) / len(samples) for label, group in by_class.items()} if samples else {}
    counts = {label: int(share) for label, share in shares.items()}
    by_remainder = sorted(shares, key=lambda label: (-(shares[label] - counts[label]), str(label)))
    for label in by_remainder[:first - sum(counts.values())]:
        counts[label] += 1
    rng = np.random.default_rng(seed)
    heads, tails = [], []
    for label, group in by_class.items():
        order = [group[i] for i in rng.permutation(len(group))]
        heads.append(order[:counts[label]])
        tails.append(order[counts[label]:])
    return _interleave(heads), _interleave(tails)


def tfds_samples(spec: str):
    """`cassava/validation` -> samples from `tfds.load` (downloads into TFDS's data dir on first use)."""
    name, _, split = spec.partition("/")
    split = split or "validation"
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise CassavaError("--data tfds:...: needs tensorflow-datasets "
                           "(pip install 'cassava-cloud-edge[data]')") from None
    try:
        dataset, info = tfds.load(name, split=split, with_info=True, shuffle_files=False)
    except Exception as exc:  # network errors, unknown datasets, bad splits: one line
        raise CassavaError(f"--data tfds:{spec}: cannot load "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    label_names = info.features["label"].names
    for index, example in enumerate(tfds.as_numpy(dataset)):
        file_name = example.get("image/filename", b"")
        file_name = file_name.decode() if isinstance(file_name, bytes) else str(file_name)
        yield Sample(f"tfds:{name}/{split}/{file_name or index}", label_names[int(example["label"])], example["image"])


def preprocess_samples(samples: Sequence[Sample], sizes: Sequence[int], desc: str = "preprocessing",
                       progress: bool = True, leave: bool = True):
    """Decode each sample once and resize it to every size in `sizes` by the shared path.

    An unreadable image is skipped and named in the returned messages, never dropped silently.
    Returns (kept samples, {size: uint8 [N, size, size, 3], or None when nothing was readable}, skipped messages).
    """
    import numpy as np
    from tqdm import tqdm

    from .preprocess import decode_image, preprocess

    kept, pixels, skipped = [], {size: [] for size in sizes}, []
    for sample in tqdm(samples, desc=desc, unit="img", disable=not progress, leave=leave, file=sys.stderr):
        try:
            rgb = decode_image(sample.source)
            resized = {size: preprocess(rgb, size) for size in sizes}
        except BadImage as exc:
            skipped.append(f"skipped {sample.name}: {exc}")
            continue
        kept.append(sample)
        for size in sizes:
            pixels[size].append(resized[size])
    return kept, {size: np.stack(p) if p else None for size, p in pixels.items()}, skipped
