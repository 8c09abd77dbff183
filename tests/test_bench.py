"""The benchmark harness itself (convkit/bench.py) on tiny shapes: it runs, validates, writes
every field, and its ratios are the ratios of the times it prints. No timing is asserted."""
import json
import os
import re

import pytest
import torch

from convkit import bench

TINY_PLANE = bench.PlaneShape("tiny-plane", 2, 3, 6, 6)
TINY_TRAIN = bench.TrainShape("tiny-train", 2)
FAST = bench.Settings(min_time=0.0, min_reps=2, warmup_time=0.0)
FAST_INTERLEAVED = bench.Settings(min_time=0.0, min_reps=2, warmup_time=0.0, interleave=True)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One `convkit bench` run on the tiny conv shape, with every output file."""
    out = tmp_path_factory.mktemp("bench")
    paths = {k: str(out / f"bench.{k}") for k in ("json", "png", "md")}
    argv = ["--shapes", "tiny", "--ops", "conv_fwd,conv_fwd_bwd", "--min-time", "0",
            "--reps", "2", "--json", paths["json"], "--plot", paths["png"],
            "--markdown", paths["md"]]
    return argv, paths


def test_cli_writes_json_with_every_field(cli_run, capsys):
    argv, paths = cli_run
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    result = json.load(open(paths["json"]))
    for key in ("machine", "roofs", "rows", "command", "settings", "device_label"):
        assert key in result
    for key in ("cpu_model", "cpu_cores", "torch_threads", "numba_threads", "gpu_name", "torch",
                "numba", "numpy", "date"):
        assert key in result["machine"]
    assert result["roofs"]["sgemm_gflops"] > 0
    rows = result["rows"]
    assert {(r["op"], r["impl"]) for r in rows} == {
        (op, impl) for op in ("conv_fwd", "conv_fwd_bwd")
        for impl in ("torch", "direct", "im2col", "auto")}
    for r in rows:
        assert set(bench.ROW_FIELDS) <= set(r)
        assert r["status"] == "ok", r
        assert r["q1_ms"] <= r["median_ms"] <= r["q3_ms"]
        assert r["first_call_ms"] > 0 and r["gflops"] > 0 and r["roof_pct"] > 0
        if r["impl"] == "torch":
            assert r["ratio"] is None and r["max_rel_error"] is None
        else:
            assert r["max_rel_error"] <= r["tolerance"]
            torch_row = next(t for t in rows if t["op"] == r["op"] and t["impl"] == "torch")
            assert r["ratio"] == pytest.approx(r["median_ms"] / torch_row["median_ms"],
                                               rel=1e-12)
    auto = [r for r in rows if r["impl"] == "auto"]
    assert all(r["auto_choice"] in ("direct", "im2col") for r in auto)
    # the summary table's ratio is the ratio of the two times printed beside it
    for op in ("conv_fwd", "conv_fwd_bwd"):
        line = next(ln for ln in printed.splitlines() if re.match(rf"tiny\s+{op}\s", ln))
        torch_ms = float(line.split()[2])
        for ms, ratio in re.findall(r"([\d.]+) \(([\d.]+)x\)", line):
            assert float(ratio) == pytest.approx(float(ms) / torch_ms, rel=6e-3)
    assert open(paths["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    md = open(paths["md"]).read()
    assert result["command"] in md and "| tiny | conv_fwd |" in md


def test_reports_rewritten_from_json_without_measuring(cli_run, tmp_path, capsys):
    argv, paths = cli_run
    if not os.path.exists(paths["json"]):
        pytest.skip("needs the JSON of test_cli_writes_json_with_every_field")
    readme = tmp_path / "README.md"
    assert bench.main(["--from-json", paths["json"], "--report", str(tmp_path),
                       "--readme", str(readme)]) == 0
    label = json.load(open(paths["json"]))["device_label"]
    assert (tmp_path / label / "full.md").exists() and (tmp_path / label / "full.png").exists()
    assert f"{label}/full.md" in readme.read_text()
    assert "convkit bench --shapes tiny" in (tmp_path / label / "full.cmd").read_text()


def test_relu_pool_and_train_step_rows_validate_interleaved(capsys):
    result = bench.run_bench([TINY_PLANE, TINY_TRAIN], bench.OPS, torch.device("cpu"),
                             settings=FAST_INTERLEAVED)
    rows = result["rows"]
    assert {r["op"] for r in rows} == set(bench.RELU_OPS + bench.POOL_OPS + bench.TRAIN_OPS)
    assert all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"]
    assert all(r["max_rel_error"] <= r["tolerance"] for r in rows if r["impl"] != "torch")
    assert all(r["gbps"] > 0 for r in rows if r["op"] != "train_step")
    assert all(r["reps"] == 2 for r in rows)
    train = {r["impl"]: r for r in rows if r["op"] == "train_step"}
    assert train["im2col"]["ratio"] == train["im2col"]["median_ms"] / train["torch"]["median_ms"]
    assert train["auto"]["auto_choice"].startswith("conv1 ")
    assert len(capsys.readouterr().out.splitlines()) >= len(rows)


def test_wrong_output_fails_validation_and_is_not_timed():
    x = torch.randn(2, 3)
    case = bench.Case(TINY_PLANE, "relu_fwd", "convkit", lambda: x + 1, "functional")
    row, _ = bench.measure(case, bench.Timer(torch.device("cpu")), FAST, reference=x)
    assert row["status"] == "FAILED validation"
    assert row["median_ms"] is None and row["max_rel_error"] > row["tolerance"]


def test_readme_section_replaced_between_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# convkit\n\nintro\n")
    row = dict.fromkeys(bench.ROW_FIELDS, None)
    row.update(shape="s", op="conv_fwd", impl="torch", status="ok", median_ms=1.0)
    result = {"rows": [row], "command": "convkit bench --quick",
              "machine": {"gpu_name": None, "cpu_model": "CPU X", "torch_threads": 2,
                          "torch": "2", "numba": "0", "date": "2025-01-01T00:00:00"}}
    bench.update_readme(str(readme), result, None)
    bench.update_readme(str(readme), result, "benchmarks/results/x/full.md")
    text = readme.read_text()
    assert text.startswith("# convkit\n\nintro\n")
    assert text.count("<!-- bench:start -->") == 1 and text.count("<!-- bench:end -->") == 1
    assert "benchmarks/results/x/full.md" in text


def test_shape_table_flops_and_selection():
    conv1 = next(s for s in bench.CONV_SHAPES if s.name == "simplecnn-conv1")
    assert conv1.output_shape == (64, 32, 28, 28)
    assert conv1.flops == 2 * 64 * 32 * 28 * 28 * 1 * 3 * 3
    stem = next(s for s in bench.CONV_SHAPES if s.name == "resnet-stem")
    assert stem.output_shape == (8, 64, 112, 112)
    quick = bench.select_shapes(None, quick=True)
    assert quick and all(s.quick for s in quick)
    assert bench.select_ops(["pool", "conv_fwd"]) == ("conv_fwd", "pool_fwd", "pool_bwd")
    with pytest.raises(SystemExit, match="unknown shape"):
        bench.select_shapes(["nope"], quick=False)
