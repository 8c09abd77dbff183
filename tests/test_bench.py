"""The benchmark harness itself (convkit/bench/) on tiny shapes: it runs, validates, writes
every field, and its ratios are the ratios of the times it prints. No timing is asserted."""
import json
import os
import re

import pytest
import torch

from convkit.bench import cases, cli, harness, report, runner, shapes

TINY_PLANE = shapes.PlaneShape("tiny-plane", 2, 3, 6, 6)
TINY_TRAIN = shapes.TrainShape("tiny-train", 2)
FAST = harness.Settings(min_time=0.0, min_reps=2, warmup_time=0.0)
FAST_INTERLEAVED = harness.Settings(min_time=0.0, min_reps=2, warmup_time=0.0, interleave=True)


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
    assert cli.main(argv) == 0
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
        for impl in ("torch", "direct", "im2col", "winograd", "auto")}  # tiny is a 3x3
    for r in rows:
        assert set(harness.ROW_FIELDS) <= set(r)
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
    assert cli.main(["--from-json", paths["json"], "--report", str(tmp_path),
                       "--readme", str(readme)]) == 0
    label = json.load(open(paths["json"]))["device_label"]
    assert (tmp_path / label / "full.md").exists() and (tmp_path / label / "full.png").exists()
    assert f"{label}/full.md" in readme.read_text()
    assert "convkit bench --shapes tiny" in (tmp_path / label / "full.cmd").read_text()


def test_relu_pool_and_train_step_rows_validate_interleaved(capsys):
    result = runner.run_bench([TINY_PLANE, TINY_TRAIN], shapes.OPS, torch.device("cpu"),
                             settings=FAST_INTERLEAVED)
    rows = result["rows"]
    assert {r["op"] for r in rows} == set(shapes.RELU_OPS + shapes.POOL_OPS + shapes.TRAIN_OPS)
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
    case = harness.Case(TINY_PLANE, "relu_fwd", "convkit", lambda: x + 1, "functional")
    row, _ = harness.measure(case, harness.Timer(torch.device("cpu")), FAST, reference=x)
    assert row["status"] == "FAILED validation"
    assert row["median_ms"] is None and row["max_rel_error"] > row["tolerance"]


def test_readme_section_replaced_between_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# convkit\n\nintro\n")
    row = dict.fromkeys(harness.ROW_FIELDS, None)
    row.update(shape="s", op="conv_fwd", impl="torch", status="ok", median_ms=1.0)
    result = {"rows": [row], "command": "convkit bench --quick",
              "machine": {"gpu_name": None, "cpu_model": "CPU X", "torch_threads": 2,
                          "torch": "2", "numba": "0", "date": "2025-01-01T00:00:00"}}
    report.update_readme(str(readme), result, None)
    report.update_readme(str(readme), result, "benchmarks/results/x/full.md")
    text = readme.read_text()
    assert text.startswith("# convkit\n\nintro\n")
    assert text.count("<!-- bench:start -->") == 1 and text.count("<!-- bench:end -->") == 1
    assert "benchmarks/results/x/full.md" in text


def test_shape_table_flops_and_selection():
    conv1 = next(s for s in shapes.CONV_SHAPES if s.name == "simplecnn-conv1")
    assert conv1.output_shape == (64, 32, 28, 28)
    assert conv1.flops == 2 * 64 * 32 * 28 * 28 * 1 * 3 * 3
    stem = next(s for s in shapes.CONV_SHAPES if s.name == "resnet-stem")
    assert stem.output_shape == (8, 64, 112, 112)
    quick = shapes.select_shapes(None, quick=True)
    assert quick and all(s.quick for s in quick)
    assert shapes.select_ops(["pool", "conv_fwd"]) == ("conv_fwd", "pool_fwd", "pool_bwd")
    with pytest.raises(SystemExit, match="unknown shape"):
        shapes.select_shapes(["nope"], quick=False)


def test_shape_table_lists_every_shape():
    listed = [line.split()[0] for line in shapes.table().splitlines()]
    assert listed == [s.name for s in shapes.all_shapes()]


@pytest.mark.parametrize("op", ["conv_bwd_input", "conv_bwd_weight"])
def test_conv_backward_rows_time_one_gradient_through_a_built_graph(op):
    """The backward-only rows give torch's gradient of the one tensor asked for, and keep
    giving it call after call (the graph built by setup is reused, not consumed)."""
    tiny = next(s for s in shapes.CONV_SHAPES if s.name == "tiny")
    built = cases.build_cases(tiny, op, torch.device("cpu"), ("direct", "im2col"))
    assert [c.impl for c in built] == ["torch", "direct", "im2col"]
    expected = (tiny.input_shape if op == "conv_bwd_input" else tiny.weight_shape)
    for case in built:
        assert case.level == "autograd"
        case.setup()
        first, second = case.run(), case.run()
        assert first.shape == expected
        torch.testing.assert_close(second, first, rtol=0, atol=0)
    timer = harness.Timer(torch.device("cpu"))
    _, reference, _ = harness.first_call(built[0], timer)
    for case in built[1:]:
        _, _, err = harness.first_call(case, timer, reference)
        assert err <= harness.TOLERANCE[torch.float32]


def test_train_step_models_start_from_the_same_weights():
    built = cases.build_cases(TINY_TRAIN, "train_step", torch.device("cpu"), ("direct",))
    timer = harness.Timer(torch.device("cpu"))
    _, reference, _ = harness.first_call(built[0], timer)
    _, out, err = harness.first_call(built[1], timer, reference)
    # same seed, same batch, same dropout mask: the losses agree to float32 rounding
    assert out[0].item() == pytest.approx(reference[0].item(), rel=1e-5)
    assert err <= harness.TOLERANCE[torch.float32]


def test_tiny_calls_script_runs(tmp_path):
    """benchmarks/tiny_calls.py (issue 15's tiny-call number) checks each op against torch and
    writes its JSON; one round, so this only proves the script works, not any speed."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "tiny_calls.py"
    out = tmp_path / "tiny.json"
    subprocess.run([sys.executable, str(script), "--rounds", "1", "--json", str(out)],
                   check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    assert set(result["rows"]) == {"conv2d forward", "relu", "max_pool2d",
                                   "conv2d forward+backward"}
    assert all(row["ratio"] > 0 for row in result["rows"].values())
