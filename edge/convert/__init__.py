"""`cassava convert`: the cloud model -> a verified TFLite copy for the edge (int8, dynamic, float16 or float32).

Conversion is TensorFlow's own `tf.lite.TFLiteConverter`. What this adds: the calibration images go through the
shared preprocessing, the result is checked against the source model on images it was not calibrated on, and
a copy that disagrees with its source is refused, not written. Verification uses every held-out image there is
(one folder is split here, stratified by class) and reports agreement with its 95% Wilson interval.
`--target-agreement` keeps the layers that cost agreement in float32 (edge/selective.py). Output, in DIR:
model.tflite, cassava-model.json (everything the edge needs to serve it) and conversion-report.json.

One job per module: `options` (what is asked, checked), `plan` (which images calibrate and verify), `build` (the
converter, its failures), `verify` (agreement, refusal), `report` (the text), `pipeline` (`convert()`, the steps in
order) and `command` (the flags and the printing).
"""
from cassava.shared.spec import REPORT_FILE

from .build import explain_failure
from .options import MODES, ConvertOptions, check_arguments
from .pipeline import LOG_FILE, Refused, convert
from .plan import plan_data
from .verify import refusal

__all__ = ["MODES", "ConvertOptions", "check_arguments", "convert", "Refused", "LOG_FILE", "REPORT_FILE",
           "plan_data", "explain_failure", "refusal"]
