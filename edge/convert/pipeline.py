"""`convert(model, out, options)`: the conversion from start to end, as a function (the command and `cassava compare`
call it). Steps: check the options, load the source once, plan and read the data, convert (or search for the
target agreement), then inspect, verify once and write only what passes."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Callable, Optional

from cassava.edge.gate.build import require_weights
from cassava.edge.gate.convert import add_gate, gate_files, gate_samples
from cassava.shared.errors import CassavaError
from cassava.shared.manifest import MANIFEST_FILE, SELFCHECK_FILE, write_manifest
from cassava.shared.spec import REPORT_FILE, SPEC_FILE, STANDIN_NOTE, TFLITE_FILE

from .build import describe_model, explain_failure, make_converter, native_output_to
from .options import VARIANT_NAMES, ConvertOptions, check_arguments
from .plan import pixels_of, plan_data
from .verify import Held, predictions, refusal, saved_model_sizes, verify

LOG_FILE = "converter.log"  # what TensorFlow's converter printed


class Refused(CassavaError):
    """The copy converted but does not answer like its source; `report` says what was measured."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def convert(model: str, out: Path, options: Optional[ConvertOptions] = None,
            notify: Callable[[str], None] = _to_stderr) -> dict:
    """Convert MODEL into OUT (model.tflite, cassava-model.json, conversion-report.json) and return the report.
    Raises CassavaError (and leaves no servable model in OUT) when it fails or the copy is refused. `notify` gets
    the notes and warnings a person should see (stderr by default)."""
    options = options or ConvertOptions()
    out = Path(out)
    io = check_arguments(options)
    if options.gate:
        require_weights()  # one line now, not after minutes of converting
    from cassava.cloud.model import load_tf_classifier, resolve_model_path
    from cassava.shared.native import import_tensorflow
    from cassava.shared.preprocess import to_model_input

    progress = not options.quiet
    source = load_tf_classifier(model, input_scale=options.input_scale, classes=options.classes)
    spec, path = source.spec, resolve_model_path(model)
    calibration, held_out, data = plan_data(options, spec)
    calibration_x = calibration_info = None
    if calibration is not None:
        kept, pixels, skipped = pixels_of(calibration, spec.input_size, "reading calibration images", progress, notify)
        calibration_x = to_model_input(pixels, spec.input_scale)
        calibration_info = {"data": data["calibration"], "images": len(kept), "skipped": skipped}
        if options.samples and len(kept) < options.samples:
            notify(f"note: calibrating on {len(kept)} images (fewer than --samples {options.samples})")
    verify_samples, verify_pixels, data["verification_skipped"] = pixels_of(
        held_out, spec.input_size, "reading verification images", progress, notify)
    if data["split"]:
        notify(f"note: {data['split']}")
    held = Held(verify_pixels, [s.label for s in verify_samples],
                predictions(source, verify_pixels, "source model", progress))

    tf = import_tensorflow()
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / LOG_FILE
    # a report, log or device manifest left from an earlier run would describe another model
    for stale in (log_path, out / REPORT_FILE, out / MANIFEST_FILE, out / SELFCHECK_FILE, *gate_files(out)):
        stale.unlink(missing_ok=True)
    if options.select_tf_ops:
        notify("warning: --select-tf-ops: TensorFlow ops may be kept in the model; the edge then needs the Flex "
               "delegate, which ai-edge-litert and tflite-runtime do not include")
    try:
        with native_output_to(log_path) as stderr:
            try:
                content, quantize, selective, verification, weighed = _converted(
                    tf, source, path, options, io, calibration_x, held, out, stderr)
                if weighed and weighed["kept_in_float32"]:
                    io = "float32"  # TFLite's QuantizationDebugger quantizes inside the model, not at its edges
            except CassavaError:
                raise
            except Exception as exc:  # ConverterError, RuntimeError or ValueError, with pages of detail
                raise CassavaError(f"{explain_failure(exc)} (converter log: {log_path})") from None
        report = check_and_write(model, out, options, tf, source, path, content, quantize, io, data,
                                 calibration_info, held, selective, verification, weighed)
        if report["verified"] and options.gate:  # before the manifest, which then lists the gate's files
            with native_output_to(log_path) as stderr:  # the gate's own TFLite conversion is as loud as the model's
                say = (lambda line: print(line, file=stderr)) if notify is _to_stderr else notify
                report["leaf_gate"] = add_gate(out, spec, gate_samples(options, spec, verify_samples),
                                               options.gate_alpha, options.gate_negatives, say, progress)
        if report["verified"]:  # what a device checks before serving it (shared/manifest.py)
            write_manifest(out, held.pixels, held.expected)
        return report
    except CassavaError:
        remove_outputs(out, notify)
        raise


def _converted(tf, source, path: Path, options: ConvertOptions, io: str, calibration_x, held: Held, out: Path,
               stderr):
    """-> (model bytes, quantize mode, the --target-agreement search's report or None, the chosen copy's
    verification when the search already made it, else None, the default int8 search's report or None)."""
    spec = source.spec
    loaded = source.saved_model

    def converter_for(mode: str, mode_io: str = "float32"):
        return make_converter(tf, loaded, path, spec, options, mode, mode_io, calibration_x, stderr)

    if options.target_agreement is None and not _searches_fewest_sent(options, calibration_x):
        return converter_for(options.quantize, io).convert(), options.quantize, None, None, None
    from cassava.edge import selective
    from cassava.edge.interpreter import TFLiteClassifier
    from cassava.shared.preprocess import to_model_input

    scratch = out / ".search"
    counter = iter(range(10 ** 6))

    def evaluate(content: bytes) -> dict:
        file = scratch / f"trial-{next(counter)}.tflite"
        file.write_bytes(content)
        return verify(held, TFLiteClassifier(file, spec), list(spec.class_names), progress=False)

    def say(line):
        if not options.quiet:
            print(line, file=stderr, flush=True)

    timed = to_model_input(held.pixels[:selective.TIMED_IMAGES], spec.input_scale)
    if options.target_agreement is None:  # the default int8 copy: the fewest sent for the escalation target
        say(f"weighing int8 copies with float32 layers: the fewest of {len(held.pixels)} held-out images sent while "
            f"joint agreement reaches {options.escalation_target:.1%} (--plain: plain int8 without this) ...")

        def joint(verification: dict) -> dict:
            from cassava.shared.bounds import CONFIDENCE
            from cassava.shared.escalation import choose

            return choose(verification["probabilities"], held.expected, options.escalation_target, margin=CONFIDENCE)

        content, verification, weighed = selective.search_fewest_sent(
            tf, converter_for, calibration_x, evaluate, joint, options.escalation_target, scratch, timed, spec, say)
        if content is None:  # plain int8 wins: converted as always, with integer I/O
            content = converter_for(options.quantize, io).convert()
        return content, "int8", None, verification, weighed
    say(f"searching for a copy with top-1 agreement >= {options.target_agreement:.1%} on {len(held.pixels)} held-out "
        "images (TFLite QuantizationDebugger: calibrating, then layer-wise error) ...")
    return (*selective.search_target(tf, converter_for, calibration_x, evaluate, options.target_agreement, scratch,
                                     timed, spec, say), None)


def _searches_fewest_sent(options: ConvertOptions, calibration_x) -> bool:
    """The default int8 copy is searched for (edge/selective.py `search_fewest_sent`) unless --plain, or a flag
    asks for something the search cannot give (integer I/O named with --io, TF ops, float fallback)."""
    return (options.escalation_search and options.quantize == "int8" and options.io is None
            and calibration_x is not None and not options.select_tf_ops and not options.allow_float_fallback)


def check_and_write(model: str, out: Path, options: ConvertOptions, tf, source, path: Path, content: bytes,
                    quantize: str, io: str, data: dict, calibration_info, held: Held, selective=None,
                    verification=None, weighed=None) -> dict:
    """Inspect and verify the converted model in a staging folder; move it into OUT only when it passes.
    `verification`: the search's own verification of these very bytes, so the chosen copy is verified once."""
    from cassava.edge.interpreter import BACKEND, Port, interpreter_class, load_tflite_classifier

    spec = source.spec
    input_detail, output_detail, ops, float_ops = describe_model(interpreter_class(), content, spec)
    flex_ops = sorted({op for op in ops if op.startswith("Flex")})
    float_only = [op for op in float_ops if op not in flex_ops]
    kept = (weighed or {}).get("kept_in_float32") or []  # the default search's float layers
    if quantize == "int8" and not options.allow_float_fallback and float_only and not selective and not kept:
        # TF 2.21's converter keeps such ops in float32 silently, even when told int8 only
        raise CassavaError(f"full-integer int8 failed: no int8 kernel for op(s) {', '.join(float_only)} "
                           "(they would run in float32); --allow-float-fallback keeps them in float32")
    variant = VARIANT_NAMES[quantize]
    if selective and quantize == "int8":
        variant += f", {len(selective['kept_in_float32'])} layer(s) kept in float32"
    elif kept:
        variant += f", {len(kept)} layer(s) kept in float32 (the fewest sent)"
    tflite_spec = spec.replace(description=f"{spec.description} (TFLite {variant})", tflite={
        "quantize": quantize, "io": io,
        "input": Port(input_detail).describe(), "output": Port(output_detail).describe(),
        "float_ops": float_ops if quantize == "int8" else [], "flex_ops": flex_ops,
        "float_layers": selective["kept_in_float32"] if selective else kept,
        "source": str(model), "converter": f"tensorflow {tf.__version__}",
    })
    staging = out / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        (staging / TFLITE_FILE).write_bytes(content)
        tflite_spec.save(staging)
        reason = None
        if flex_ops:
            verification = None
            reason = ("not verified: no TFLite interpreter here has the Flex delegate for op(s) "
                      f"{', '.join(flex_ops)}; test the model where it will run")
        else:
            if verification is None:
                verification = verify(held, load_tflite_classifier(staging), list(spec.class_names),
                                      progress=not options.quiet)
            reason = refusal(verification, options.min_agreement, ops)
        escalation = _escalation(verification, held, options.escalation_target)
        if escalation:  # the spec carries the threshold the edge escalates below (docs/joint-inference.md)
            tflite_spec = tflite_spec.replace(escalate_below=escalation["threshold"],
                                              agreement_bound=(escalation["margin"] or {}).get("lower"))
            tflite_spec.save(staging)
        accepted = verification is None or reason is None
        report = {
            "model": str(model), "source_path": str(path), "description": tflite_spec.title,
            "standin": spec.standin,
            "out": str(out / TFLITE_FILE), "quantize": quantize,
            "io": {"input": tflite_spec.tflite["input"], "output": tflite_spec.tflite["output"]},
            "calibration": calibration_info, "data": data,
            "verification": verification, "min_agreement": options.min_agreement,
            "min_agreement_rule": "refused when the 95% Wilson interval of top-1 agreement lies wholly below it",
            "accepted": accepted, "verified": verification is not None, "reason": reason,
            "sizes": {**saved_model_sizes(path), "tflite_bytes": len(content)},
            "ops": ops, "float_ops": float_ops, "flex_ops": flex_ops, "selective": selective, "escalation": escalation,
            "escalation_search": weighed,
            "interpreter": BACKEND, "tensorflow": tf.__version__,
        }
        if spec.standin:
            report["note"] = STANDIN_NOTE
        (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        if not accepted:
            raise Refused(f"refused to write {out / TFLITE_FILE}: {reason} (details in {out / REPORT_FILE})", report)
        for name in (TFLITE_FILE, SPEC_FILE):
            (staging / name).replace(out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _escalation(verification: Optional[dict], held: Held, target: float) -> Optional[dict]:
    """The threshold meeting `target` agreement with the source on the held-out images, and its curve. Held out,
    not the calibration images: the int8 copy agrees best on the images it was calibrated on, so a threshold chosen
    there sends too few of new photos (docs/joint-inference.md). Chosen with a margin: judged by the 95 % lower
    bound on agreement among the images the edge keeps (shared/escalation.py `with_margin`), which the report states
    and the spec stores. Takes the copy's answers out of `verification`."""
    probabilities = verification.pop("probabilities", None) if verification else None
    if probabilities is None or not len(probabilities):
        return None
    from cassava.shared.bounds import CONFIDENCE
    from cassava.shared.escalation import choose

    return choose(probabilities, held.expected, target, margin=CONFIDENCE)


def remove_outputs(out: Path, notify: Callable[[str], None] = _to_stderr) -> None:
    """A failed conversion leaves no servable model behind, not even one from an earlier run."""
    for name in (TFLITE_FILE, SPEC_FILE, MANIFEST_FILE, SELFCHECK_FILE, *(p.name for p in gate_files(out))):
        if (out / name).is_file():
            (out / name).unlink()
            notify(f"removed the previous {out / name}")
