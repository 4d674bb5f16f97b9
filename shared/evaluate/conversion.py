"""Without `--edge-model`, `cassava compare` converts the cloud model itself: which `convert` options per
variant, the conversions (through the edge tier's `convert`, reused when nothing changed), and what their reports
say about calibration."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, List

from ..data import load_samples
from ..errors import CassavaError
from ..formatting import count_text
from ..spec import REPORT_FILE, TFLITE_FILE, model_kind

STAMP_FILE = "compare-source.json"  # beside each converted copy: what it was converted from, and how


def conversion_plan(options) -> Dict[str, dict]:
    """`convert` options per variant (ConvertOptions' field names), and where int8's calibration images come from.

    - the stand-in: the converter's own default, the synthetic train split (disjoint from the validation photos);
    - --calibration given: those images calibrate, the evaluation images verify;
    - otherwise (say the 27 real photos) there is nothing else to calibrate on: the first half of the evaluation
      images calibrates int8 and the other half verifies it, and the report says so loudly.
    The converter's own agreement gate is off (min_agreement 0): here agreement is what is being measured."""
    variants = [v.strip() for v in options.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in ("int8", "dynamic", "float16", "none")]
    if unknown or not variants or len(set(variants)) != len(variants):
        raise CassavaError(f"--variants {options.variants}: expected some of int8,dynamic,float16,none")
    standin = model_kind(options.cloud_model) == "standin"
    verify = {} if standin else {"verify_data": list(options.data)}
    plan = {}
    for variant in variants:
        chosen = {"quantize": variant, "min_agreement": 0.0, "quiet": True}
        if variant == "int8" and options.calibration:
            chosen.update(calibration=list(options.calibration), **verify)
        elif variant == "int8" and not standin:
            total = len(load_samples(options.data))
            if total < 2:
                raise CassavaError("int8 needs calibration images: pass --calibration DATA "
                                   "(or --variants dynamic,float16)")
            chosen.update(calibration=list(options.data), samples=min(200, total // 2))
        elif variant != "int8":
            chosen.update(verify)
        plan[variant] = chosen
    return plan


def convert_variants(options, out_dir: Path, progress: bool) -> List[str]:
    """Convert the cloud model to each variant, in this process, through the edge tier's `convert`. A copy is
    reused when its stamp (the model's identity and the conversion's options) is unchanged."""
    from ..tiers import tool

    paths = []
    for variant, chosen in conversion_plan(options).items():
        target = out_dir / variant
        convert_options = tool("convert_options")(**chosen, input_scale=options.input_scale,
                                                  classes=list(options.classes) if options.classes else None)
        stamp = {"cloud_model": _identity(options.cloud_model), "options": convert_options.as_dict()}
        stamp_file = target / STAMP_FILE
        if (target / TFLITE_FILE).is_file() and stamp_file.is_file():
            try:
                if json.loads(stamp_file.read_text()) == stamp:
                    paths.append(str(target))
                    continue
            except json.JSONDecodeError:
                pass
        if progress:
            print(f"converting {options.cloud_model} -> {target} ({variant}) ...", file=sys.stderr, flush=True)
        stamp_file.unlink(missing_ok=True)  # a failed conversion must not leave an old stamp that matches
        try:
            tool("convert")(options.cloud_model, target, convert_options, notify=lambda line: None)
        except CassavaError as exc:
            raise CassavaError(f"converting the cloud model to {variant} failed: cassava convert: error: "
                               f"{str(exc)[:400]}") from None
        stamp_file.write_text(json.dumps(stamp, indent=2) + "\n")
        paths.append(str(target))
    return paths


def _identity(model: str) -> dict:
    """What identifies a model version for the conversion cache: its path and the SavedModel's mtime."""
    if model_kind(model) == "standin":
        from ..cache import STANDIN_VERSION

        return {"model": model, "version": STANDIN_VERSION}
    path = Path(model)
    pb = path / "saved_model.pb"
    return {"model": str(path.resolve()) if path.exists() else model,
            "mtime": pb.stat().st_mtime if pb.is_file() else None}


def conversion_notes(entries, eval_data: str) -> tuple:
    """(calibration sentence for the report, warnings) from each converted model's conversion-report.json."""
    parts, warnings = [], []
    for entry in entries:
        report_file = Path(entry.path) / REPORT_FILE if Path(entry.path).is_dir() else \
            Path(entry.path).parent / REPORT_FILE
        if entry.kind != "tflite" or not report_file.is_file():
            continue
        try:
            report = json.loads(report_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        calibration = report.get("calibration")
        verification = report.get("verification") or {}
        if not calibration:
            continue
        text = f"{entry.name}: {calibration.get('images')} images from {calibration.get('data')}"
        if verification:
            agreement = count_text(verification.get("agree"), verification.get("images"),
                                   verification.get("agreement_ci95"))
            text += (f"; the converter checked it on {verification.get('images')} other images from "
                     f"{(report.get('data') or {}).get('verification')} ({agreement} top-1 agreement with the source)")
        parts.append(text)
        if calibration.get("data") == eval_data:
            warnings.append(
                f"**{entry.name} was calibrated on {calibration.get('images')} of the evaluation images themselves** "
                f"({eval_data}): no separate calibration set was given, so int8 has seen part of this data and its "
                "numbers here may be slightly optimistic. Pass --calibration with other photos for an unbiased check.")
    return ("; ".join(parts) if parts else None), warnings
