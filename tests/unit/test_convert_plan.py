"""`cassava convert`'s decisions before TensorFlow loads (edge/convert/): argument contradictions, which images
calibrate and which verify, the converter's failure text turned into one line, and when a copy is refused."""
from __future__ import annotations

import pytest

from cassava.edge.convert import check_arguments, explain_failure, plan_data, refusal
from cassava.shared.errors import CassavaError
from cassava.shared.spec import ModelSpec

from helpers import parse_args

SPEC = ModelSpec(description="a user's model")  # not the stand-in: nothing calibrates or verifies by default


def convert_args(*extra):
    return parse_args("convert", "--model", "model_dir", "--out", "out", *extra)


# ---------------------------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("extra, io", [
    ((), "uint8"),
    (("--io", "int8"), "int8"),
    (("--io", "float32"), "float32"),
    (("--quantize", "dynamic"), "float32"),
    (("--quantize", "float16", "--io", "float32"), "float32"),
    (("--quantize", "none"), "float32"),
    (("--target-agreement", "0.99"), "float32"),
    (("--target-agreement", "1", "--io", "float32"), "float32"),
    (("--min-agreement", "0"), "uint8"),
    (("--min-agreement", "1"), "uint8"),
])
def test_consistent_arguments_give_the_io_type(extra, io):
    assert check_arguments(convert_args(*extra)) == io


@pytest.mark.parametrize("extra, flag", [
    (("--samples", "0"), "--samples"),
    (("--verify-samples", "-1"), "--verify-samples"),
    (("--min-agreement", "1.5"), "--min-agreement"),
    (("--min-agreement", "-0.1"), "--min-agreement"),
    (("--target-agreement", "0"), "--target-agreement"),
    (("--target-agreement", "1.01"), "--target-agreement"),
    (("--target-agreement", "0.99", "--quantize", "dynamic"), "--target-agreement"),
    (("--target-agreement", "0.99", "--io", "uint8"), "--io uint8"),
    (("--quantize", "dynamic", "--io", "int8"), "--io int8"),
    (("--quantize", "float16", "--allow-float-fallback"), "--allow-float-fallback"),
])
def test_contradictions_are_a_cassava_error_naming_the_flag(extra, flag):
    with pytest.raises(CassavaError) as error:
        check_arguments(convert_args(*extra))
    assert str(error.value).startswith(flag)


# ---------------------------------------------------------------------------------------------- data


def _names(samples):
    return {s.name for s in samples}


def test_int8_without_calibration_images_is_refused():
    with pytest.raises(CassavaError, match="^--quantize int8 needs --calibration DATA"):
        plan_data(convert_args(), SPEC)


def test_one_folder_is_split_stratified_disjoint_half_at_most(photo_folder):
    folder = photo_folder({"cbb": 6, "cmd": 4, "healthy": 2})  # 12 images
    calibration, verify, info = plan_data(convert_args("--calibration", folder), SPEC)
    assert len(calibration) == 6 and len(verify) == 6  # half: 200 asked, capped at 12 // 2
    assert not _names(calibration) & _names(verify)
    assert _names(calibration) | _names(verify) == {str(p) for p in folder.rglob("*.png")}
    shares = {label: sum(s.label == label for s in calibration) for label in ("cbb", "cmd", "healthy")}
    assert shares == {"cbb": 3, "cmd": 2, "healthy": 1}  # each class halved
    assert info["split"] and info["calibration_images_excluded"] == 0
    assert info["verification_files"] == [s.name for s in verify]
    assert info["calibration_files"] == [s.name for s in calibration]


def test_samples_above_half_are_capped_and_below_half_kept(photo_folder):
    folder = photo_folder({"cbb": 5, "cmd": 5})
    calibration, verify, info = plan_data(convert_args("--calibration", folder, "--samples", "8"), SPEC)
    assert (len(calibration), len(verify)) == (5, 5) and "capped" in info["split"]
    calibration, verify, info = plan_data(convert_args("--calibration", folder, "--samples", "2"), SPEC)
    assert (len(calibration), len(verify)) == (2, 8) and "capped" not in info["split"]


def test_the_split_is_the_same_on_every_run(photo_folder):
    folder = photo_folder({"cbb": 7, "cgm": 5})
    first = plan_data(convert_args("--calibration", folder), SPEC)
    second = plan_data(convert_args("--calibration", folder), SPEC)
    assert _names(first[0]) == _names(second[0]) and [s.name for s in first[1]] == [s.name for s in second[1]]


def test_one_image_cannot_both_calibrate_and_verify(photo_folder):
    folder = photo_folder({"cbb": 1})
    with pytest.raises(CassavaError, match="one image cannot both calibrate and verify"):
        plan_data(convert_args("--calibration", folder), SPEC)


def test_verify_data_that_is_all_calibration_is_refused(photo_folder):
    folder = photo_folder({"cbb": 3, "cmd": 3})
    with pytest.raises(CassavaError, match="every image was also used for calibration"):
        plan_data(convert_args("--calibration", folder, "--verify-data", folder), SPEC)


def test_calibration_images_in_verify_data_are_left_out_and_counted(photo_folder):
    calibrate = photo_folder({"cbb": 2, "cmd": 2}, "calibrate")
    held = photo_folder({"cbb": 3, "cmd": 3}, "held")
    calibration, verify, info = plan_data(
        convert_args("--calibration", calibrate, "--verify-data", held, calibrate), SPEC)
    assert _names(calibration) == {str(p) for p in calibrate.rglob("*.png")}
    assert _names(verify) == {str(p) for p in held.rglob("*.png")}
    assert info["calibration_images_excluded"] == 4 and info["split"] is None


def test_verify_samples_caps_the_held_out_images_by_class(photo_folder):
    calibrate = photo_folder({"cbb": 2}, "calibrate")
    held = photo_folder({"cbb": 6, "cmd": 6}, "held")
    _, verify, _ = plan_data(convert_args("--calibration", calibrate, "--verify-data", held,
                                          "--verify-samples", "4"), SPEC)
    assert len(verify) == 4 and sorted(s.label for s in verify) == ["cbb", "cbb", "cmd", "cmd"]


def test_float_modes_calibrate_nothing_and_verify_on_every_given_image(photo_folder):
    folder = photo_folder({"cbb": 2, "healthy": 3})
    calibration, verify, info = plan_data(convert_args("--quantize", "dynamic", "--calibration", folder), SPEC)
    assert calibration is None and len(verify) == 5 and info["calibration"] is None


def test_float_modes_with_nothing_to_verify_on_are_refused():
    with pytest.raises(CassavaError, match="^nothing to verify on"):
        plan_data(convert_args("--quantize", "float16"), SPEC)


def test_the_standin_calibrates_on_train_and_verifies_on_validation(standin_data):
    calibration, verify, info = plan_data(convert_args("--samples", "20"), ModelSpec(standin=True))
    assert len(calibration) == 20 and all("/train/" in s.name for s in calibration)
    assert verify and all("/validation/" in s.name for s in verify)
    assert info["calibration"] == "standin:train" and info["calibration_images_excluded"] == 0


# ---------------------------------------------------------------------------------------------- failures


def test_ops_without_an_int8_kernel_are_named_once_each():
    text = ("error: Quantization not yet supported for op: 'ATAN2'\n...\n"
            "error: Quantization not yet supported for op: 'ATAN2'\nQuantization not yet supported for op: 'ERF'")
    line = explain_failure(RuntimeError(text))
    assert "op(s) ATAN2, ERF;" in line and "--allow-float-fallback" in line and "\n" not in line


@pytest.mark.parametrize("text", [
    "Some ops are not supported by the native TFLite runtime...\nTF Select ops: Erfinv, Lgamma\nDetails: ...",
    "loc(...): error: 'tf.Erfinv' op is neither a custom op nor a flex op\n"
    "loc(...): error: 'tf.Lgamma' op is neither a custom op nor a flex op",
])
def test_tensorflow_only_ops_are_named_with_select_tf_ops(text):
    line = explain_failure(ValueError(text))
    assert "op(s) Erfinv, Lgamma are TensorFlow ops" in line and "--select-tf-ops" in line


def test_calibration_without_the_flex_delegate_points_to_float_modes():
    line = explain_failure(RuntimeError("Select TensorFlow op(s), included in the given model, is(are) not supported"))
    assert "Flex delegate" in line and "--quantize dynamic" in line


def test_anything_else_keeps_the_exception_type_and_its_first_line():
    line = explain_failure(OSError("\n\n  disk full  \nmore"))
    assert line == "TFLite conversion failed (OSError: disk full)"
    assert explain_failure(KeyError()) == "TFLite conversion failed (KeyError: KeyError)"
    assert len(explain_failure(RuntimeError("x" * 5000))) < 400


def _verification(agree, images, low, high, non_finite=0):
    return {"agree": agree, "images": images, "top1_agreement": agree / images, "agreement_ci95": [low, high],
            "non_finite_outputs": non_finite}


def test_a_copy_whose_interval_reaches_the_minimum_is_kept():
    assert refusal(_verification(141, 150, 0.89, 0.97), 0.95, ["CONV_2D"]) is None
    assert refusal(_verification(150, 150, 0.975, 1.0), 1.0, ["CONV_2D"]) is None


def test_a_copy_wholly_below_the_minimum_is_refused():
    why = refusal(_verification(60, 150, 0.32, 0.48), 0.95, ["CONV_2D"])
    assert why is not None and "60/150" in why and "95%" in why


def test_non_finite_scores_are_refused_whatever_the_agreement():
    why = refusal(_verification(150, 150, 0.97, 1.0, non_finite=3), 0.0, ["CONV_2D"])
    assert why.startswith("the TFLite copy returns NaN or infinite scores on 3 of 150 images")
    assert "VAR_HANDLE" not in why


def test_non_finite_scores_with_variable_ops_name_the_keras3_export():
    why = refusal(_verification(10, 150, 0.03, 0.1, non_finite=150), 0.95, ["VAR_HANDLE", "READ_VARIABLE"])
    assert "VAR_HANDLE" in why and "model.export(path)" in why
