import json

from benchmarks import original_grid


def test_original_grid_measures_every_step(tmp_path, capsys):
    original_grid.main(["--slices", "20", "--rows", "48", "--postprocess", "lcc", "--json", "--keep", str(tmp_path)])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [step["step"] for step in result["steps"]] == [
        "read image", "preprocess", "compact image", "back to the original grid", "postprocess lcc", "write label",
        "report and overlay"]
    assert result["voxels"] == 20 * 48 * 48 and result["image_dtype_kept"] == "int16"
    assert all(step["peak_gb"] >= step["held_before_gb"] > 0 for step in result["steps"])
    assert (tmp_path / "out" / "case_report.json").is_file()
