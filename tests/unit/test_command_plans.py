"""How `cassava predict` reconciles its mode flags (`chosen_mode`) and which `cassava convert` arguments
`cassava compare` gives each variant's `convert` (`conversion_plan`), from the real parser's arguments."""
from __future__ import annotations

import pytest

from cassava.shared.client.predict import PredictOptions, chosen_mode
from cassava.shared.errors import CassavaError
from cassava.shared.evaluate.compare import CompareOptions, conversion_plan

from helpers import parse_args

URL = "http://127.0.0.1:8080"


def predict_args(*extra):
    return PredictOptions.from_args(parse_args("predict", "--data", "standin", *extra))


@pytest.mark.parametrize("extra, mode", [
    ((), "in-process"),
    (("--in-process",), "in-process"),
    (("--local",), "local"),
    (("--local", URL), "local"),
    (("--remote", URL), "remote"),
    (("--edge", URL), "edge"),
    (("--auto", "--edge", URL), "auto"),
    (("--auto", "--edge", URL, "--cloud", URL), "auto"),
])
def test_each_mode_flag_chooses_its_mode(extra, mode):
    assert chosen_mode(predict_args(*extra)) == mode


@pytest.mark.parametrize("extra, message", [
    (("--local", "--remote", URL), "choose one of --local, --remote"),
    (("--in-process", "--edge", URL), "choose one of --in-process, --edge"),
    (("--local", URL, "--remote", URL, "--edge", URL), "choose one of --local, --remote, --edge"),
    (("--cloud", URL), "--cloud is the --auto fallback"),
    (("--edge", URL, "--cloud", URL), "--cloud is the --auto fallback"),  # --cloud pairs with --edge under --auto
    (("--auto", "--edge", URL, "--local", URL), "--auto chooses between --edge and --cloud; drop --local"),
    (("--auto", "--in-process", "--remote", URL), "drop --in-process, --remote"),
])
def test_contradicting_mode_flags_are_one_cassava_error(extra, message):
    with pytest.raises(CassavaError) as error:
        chosen_mode(predict_args(*extra))
    assert message in str(error.value)


def compare_args(*extra):
    return CompareOptions.from_args(parse_args("compare", *extra))


def test_the_standin_converts_each_variant_with_its_own_defaults():
    plan = conversion_plan(compare_args("--cloud-model", "standin", "--data", "standin"))
    assert list(plan) == ["int8", "dynamic", "float16"]  # the default variants, in order
    for variant, chosen in plan.items():  # the converter's train/validation split; gate off
        assert chosen == {"quantize": variant, "min_agreement": 0.0, "quiet": True}


def test_given_calibration_calibrates_int8_and_the_evaluation_images_verify(photo_folder):
    data, calibration = photo_folder({"cbb": 4}, "data"), photo_folder({"cmd": 4}, "calibration")
    plan = conversion_plan(compare_args("--cloud-model", "model_dir", "--data", data, "--calibration", calibration,
                                        "--variants", "int8,none"))
    assert plan == {
        "int8": {"quantize": "int8", "min_agreement": 0.0, "quiet": True, "calibration": [str(calibration)],
                 "verify_data": [str(data)]},
        "none": {"quantize": "none", "min_agreement": 0.0, "quiet": True, "verify_data": [str(data)]},
    }


def test_without_calibration_int8_calibrates_on_half_the_evaluation_images(photo_folder):
    data = photo_folder({"cbb": 5, "cmd": 4})  # 9 images: 4 calibrate, the converter's split
    plan = conversion_plan(compare_args("--cloud-model", "model_dir", "--data", data, "--variants", "int8"))
    assert plan["int8"] == {"quantize": "int8", "min_agreement": 0.0, "quiet": True, "calibration": [str(data)],
                            "samples": 4}


def test_without_calibration_int8_on_one_image_is_refused(photo_folder):
    data = photo_folder({"cbb": 1})
    with pytest.raises(CassavaError, match="int8 needs calibration images"):
        conversion_plan(compare_args("--cloud-model", "model_dir", "--data", data))
    plan = conversion_plan(compare_args("--cloud-model", "model_dir", "--data", data, "--variants", "dynamic"))
    assert plan == {"dynamic": {"quantize": "dynamic", "min_agreement": 0.0, "quiet": True,
                                "verify_data": [str(data)]}}


@pytest.mark.parametrize("variants", ["", "int4", "int8,int8", "int8,,dynamic,fp16", " , "])
def test_unknown_empty_or_repeated_variants_are_refused(variants):
    with pytest.raises(CassavaError, match="--variants"):
        conversion_plan(compare_args("--cloud-model", "standin", "--data", "standin", "--variants", variants))


def test_spaces_and_empty_items_in_variants_are_ignored():
    plan = conversion_plan(compare_args("--cloud-model", "standin", "--data", "standin",
                                        "--variants", " none, float16 ,"))
    assert list(plan) == ["none", "float16"]
