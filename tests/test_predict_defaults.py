"""`cassava predict` classifies everything it is given by default; a TFDS split gets a printed default; the plot
shows 16 images, mistakes first, and says how many it leaves out."""
from __future__ import annotations

import json
import shutil

import numpy as np

from helpers import run_cli


def test_a_folder_is_classified_whole_by_default(standin_data, tmp_path):
    from cassava.shared.data import load_samples

    folder = tmp_path / "photos"
    for sample in load_samples(str(standin_data), 21):  # 21 > the old default of 16
        target = folder / sample.label
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(sample.source, target)
    result = run_cli("predict", "--in-process", "--model", "standin", "--data", folder, "--json", tmp_path / "out.json",
                     "--plot", tmp_path / "grid.png", "--quiet", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    records = json.loads((tmp_path / "out.json").read_text())
    assert len(records) == 21 and all(r["prediction"] for r in records)
    assert "21 images classified" in result.stdout
    assert (tmp_path / "grid.png").stat().st_size > 10_000


def test_tfds_split_default_is_said():
    from cassava.shared.client.predict import TFDS_DEFAULT_N, default_limit

    assert default_limit(None, ["some/folder", "leaf.jpg"]) == 0  # 0 = everything
    assert default_limit(5, ["tfds:cassava/validation"]) == 5
    assert default_limit(None, ["tfds:cassava/validation"]) == TFDS_DEFAULT_N


def test_tfds_split_default_is_printed(capsys):
    from cassava.shared.client.predict import TFDS_DEFAULT_N, default_limit

    default_limit(None, ["tfds:cassava/test"])
    err = capsys.readouterr().err
    assert f"classifying the first {TFDS_DEFAULT_N} images of tfds:cassava/test" in err and "-n 0" in err


def test_grid_shows_mistakes_first_and_counts_what_it_leaves_out():
    from cassava.shared.client.plotting import grid_selection

    image = np.zeros((8, 8, 3), np.uint8)
    records = [{"file": f"{i}.jpg", "label": "cmd", "prediction": "cmd" if i % 10 else "cbb", "probability": 0.9}
               for i in range(40)]  # images 0, 10, 20, 30 are mistakes
    records.append({"file": "bad.jpg", "label": "cmd", "prediction": None, "error": "corrupt image"})
    pairs, caption = grid_selection([image] * 40 + [None], records)
    assert len(pairs) == 16
    assert [r["file"] for _, r in pairs[:4]] == ["0.jpg", "10.jpg", "20.jpg", "30.jpg"]
    assert [r["file"] for _, r in pairs[4:6]] == ["1.jpg", "2.jpg"]
    assert caption == "36/40 right; showing 16 of 40 images (mistakes first), 24 not shown"
    few, caption = grid_selection([image] * 3, records[1:4])
    assert len(few) == 3 and caption == "3/3 right"


def test_cloud_settled_images_are_counted_in_the_grid_and_the_summary():
    from cassava.shared.client.output import summarize
    from cassava.shared.client.plotting import grid_selection

    image = np.zeros((8, 8, 3), np.uint8)
    who = ["edge", "cloud", "cloud", "edge-provisional", "edge"]
    records = [{"file": f"{i}.jpg", "label": "cmd", "prediction": "cmd", "probability": 0.9, "answered_by": by}
               for i, by in enumerate(who)]
    assert grid_selection([image] * 5, records)[1] == "5/5 right; 2 settled by the cloud (blue frame)"
    assert summarize(records, "m", "edge").endswith(
        "tier: edge; 2 settled by the cloud, 1 answered provisionally by the edge (cloud unreachable)")
    plain = [{**r, "answered_by": None} for r in records]
    assert summarize(plain, "m", "edge").endswith("tier: edge") and grid_selection([image] * 5, plain)[1] == "5/5 right"
