"""Which images calibrate int8 and which verify the copy, and their pixels through the shared preprocessing."""
from __future__ import annotations

from typing import Callable

from cassava.shared.errors import CassavaError

from .options import DEFAULT_SAMPLES


def plan_data(args, spec):
    """-> (calibration samples or None, verification samples, what each is and where it came from).

    Verification uses every held-out image the data allows. With one DATA for both jobs (no --verify-data, not the
    stand-in), it is split here: stratified by class, disjoint, calibration at most half of it."""
    from cassava.shared.data import describe, load_samples, stratified_split

    calibration_data = args.calibration or (["standin:train"] if spec.standin else None)
    if args.quantize == "int8" and not calibration_data:
        raise CassavaError("--quantize int8 needs --calibration DATA: about 200 photos like the ones the model will "
                           "classify (a class folder, files or a glob); the rest of them verify the result")
    pool = load_samples(calibration_data) if calibration_data else []
    calibration, split = None, None
    if args.verify_data:
        verify, source = load_samples(args.verify_data), describe(args.verify_data)
    elif spec.standin:
        verify, source = load_samples("standin"), "standin (the stand-in's validation split)"
    elif args.quantize != "int8" and pool:
        verify, source = pool, describe(calibration_data)  # nothing calibrates: every image verifies
    elif args.quantize == "int8":
        if len(pool) < 2:
            raise CassavaError(f"--calibration {describe(calibration_data)}: one image cannot both calibrate and "
                               "verify; pass more photos or --verify-data DATA")
        count = min(args.samples or DEFAULT_SAMPLES, len(pool) // 2)
        calibration, verify = stratified_split(pool, count)
        source = f"{describe(calibration_data)} (the images not used for calibration)"
        split = (f"{describe(calibration_data)} split by this command, stratified by class: {len(calibration)} images "
                 f"calibrate, the other {len(verify)} verify (disjoint)")
        if args.samples and args.samples > count:
            split += f"; --samples {args.samples} capped at half of the {len(pool)} images"
    else:
        raise CassavaError("nothing to verify on: pass --verify-data DATA (held-out photos) to compare the TFLite copy "
                           "with the source")
    if args.quantize == "int8" and calibration is None:
        calibration = stratified_split(pool, args.samples or DEFAULT_SAMPLES)[0]

    used = {s.name for s in calibration or []}
    held_out = [s for s in verify if s.name not in used]  # never verify on an image that calibrated the model
    if not held_out:
        raise CassavaError(f"--verify-data {source}: every image was also used for calibration; pass other photos")
    overlap = len(verify) - len(held_out)
    if args.verify_samples and args.verify_samples < len(held_out):
        held_out = stratified_split(held_out, args.verify_samples)[0]
    return calibration, held_out, {"calibration": describe(calibration_data) if calibration else None,
                                   "verification": source, "split": split, "calibration_images_excluded": overlap,
                                   "calibration_files": [s.name for s in calibration or []],
                                   "verification_files": [s.name for s in held_out]}


def pixels_of(samples, size: int, what: str, progress: bool, notify: Callable[[str], None]):
    """Preprocess samples (the shared path); an unreadable image is reported through `notify` and counted, never
    dropped silently."""
    from cassava.shared.data import preprocess_samples

    kept, pixels, skipped = preprocess_samples(samples, [size], desc=what, progress=progress, leave=False)
    for line in skipped:
        notify(line)
    if not kept:
        raise CassavaError(f"{what}: none of the {len(samples)} images could be read")
    return kept, pixels[size], len(skipped)
