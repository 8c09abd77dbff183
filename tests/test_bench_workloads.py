"""Whole-network workloads of ``convkit bench`` (convkit/bench/shapes.WORKLOADS, bench/weighted):
the ResNet tables against counts and multiply-adds worked out by hand from the architecture, the
occurrence-weighted arithmetic on fabricated rows, ``--shapes`` selection, and one tiny run end
to end. No timing is asserted."""
import json
import re

import pytest

from convkit.bench import cli, harness, report, shapes, weighted

# multiply-adds of one image through a conv: output pixels x K x C x KH x KW
_MAC = {
    "stem": 112 * 112 * 64 * 3 * 7 * 7,
    "3x3 56 64": 56 * 56 * 64 * 64 * 9,
}


def _r18_macs_by_hand() -> int:
    """ResNet-18, one 224x224 image: stem; 4 3x3 convs at 56x56 C64; then per stage (out 28, 14,
    7 with K 128, 256, 512): a strided 3x3 C->K, a 1x1 strided downsample C->K, three 3x3 K->K."""
    total = _MAC["stem"] + 4 * _MAC["3x3 56 64"]
    for C, K, out in ((64, 128, 28), (128, 256, 14), (256, 512, 7)):
        total += out * out * K * C * 9 + out * out * K * C + 3 * out * out * K * K * 9
    return total


def test_resnet18_table_matches_the_architecture():
    w = shapes.WORKLOADS["resnet18-convs"]
    assert w.num_convs == 20 and len(w.convs) == 11
    assert all(s.N == 8 for s in w.shapes)
    assert _r18_macs_by_hand() == 1_813_561_344          # torchvision's "1.81 GFLOPS"
    assert w.flops == 8 * 2 * _r18_macs_by_hand()
    counts = w.counts
    assert counts["r18-stem"] == 1 and counts["r18-l1-3x3-64-64"] == 4
    for stage, C, K in ((2, 64, 128), (3, 128, 256), (4, 256, 512)):
        assert counts[f"r18-l{stage}-3x3s2-{C}-{K}"] == 1
        assert counts[f"r18-l{stage}-1x1s2-{C}-{K}"] == 1
        assert counts[f"r18-l{stage}-3x3-{K}-{K}"] == 3
    by_name = {s.name: s for s in w.shapes}
    assert by_name["r18-stem"].output_shape == (8, 64, 112, 112)
    # a stage's strided conv and its downsample both land on the size its other convs run at
    for stage, C, K, out in ((2, 64, 128, 28), (3, 128, 256, 14), (4, 256, 512, 7)):
        for name in (f"r18-l{stage}-3x3s2-{C}-{K}", f"r18-l{stage}-1x1s2-{C}-{K}",
                     f"r18-l{stage}-3x3-{K}-{K}"):
            assert by_name[name].output_shape == (8, K, out, out)


def test_resnet50_table_matches_the_architecture():
    w = shapes.WORKLOADS["resnet50-convs"]
    assert w.num_convs == 1 + 3 * 3 + 1 + 4 * 3 + 1 + 6 * 3 + 1 + 3 * 3 + 1 == 53
    assert len(w.convs) == 23
    # by hand, per stage at output size `out` (stride on the 3x3, v1.5): the first block's
    # reduce runs at the stage's input size, its 3x3 is strided, the downsample is strided
    macs = _MAC["stem"]
    macs += (56 * 56 * (64 * 64 + 9 * 64 * 64 + 64 * 256 + 64 * 256)      # block 1 + downsample
             + 2 * 56 * 56 * (256 * 64 + 9 * 64 * 64 + 64 * 256))        # blocks 2-3
    for C, width, blocks, size in ((256, 128, 4, 56), (512, 256, 6, 28), (1024, 512, 3, 14)):
        out = size // 2
        macs += (size * size * C * width + out * out * 9 * width * width
                 + out * out * width * 4 * width + out * out * C * 4 * width)
        macs += (blocks - 1) * out * out * (4 * width * width + 9 * width * width
                                            + width * 4 * width)
    assert round(macs / 1e9, 2) == 4.09                  # torchvision's "4.09 GFLOPS"
    assert w.flops == 8 * 2 * macs
    counts = w.counts
    assert counts["r50-l1-1x1-64-256"] == 4              # 3 expands + the stride-1 downsample
    assert counts["r50-l3-1x1-256-1024"] == 6 and counts["r50-l3-3x3-256-256"] == 5
    assert counts["r50-l4-1x1s2-1024-2048"] == 1


def test_workload_rows_have_unique_names_and_stay_out_of_the_default_table():
    table_names = {s.name for s in shapes.all_shapes()}
    for w in shapes.WORKLOADS.values():
        names = [s.name for s in w.shapes]
        assert len(names) == len(set(names)) and not table_names & set(names)
    assert shapes.select_shapes(None, quick=False) == shapes.all_shapes()
    assert shapes.select_shapes(["all"], quick=False) == shapes.all_shapes()


def test_shapes_option_expands_a_workload_name():
    args = cli.build_parser().parse_args(
        ["--shapes", "resnet18-convs,tiny", "r18-stem", "--ops", "conv_fwd", "conv_bwd_input"])
    picked = shapes.select_shapes(cli._split(args.shapes), quick=False)
    r18 = shapes.WORKLOADS["resnet18-convs"].shapes
    assert picked[:11] == list(r18) and picked[11].name == "tiny" and len(picked) == 12
    assert [s.name for s in shapes.select_shapes(["r50-l4-3x3-512-512"], False)] == \
        ["r50-l4-3x3-512-512"]
    with pytest.raises(SystemExit, match="resnet18-convs"):
        shapes.select_shapes(["resnet19-convs"], quick=False)
    listing = shapes.workloads_table()
    assert "resnet18-convs" in listing and "20 convs, 11 distinct" in listing
    assert "1.81 G multiply-adds" in listing and "4.09 G multiply-adds" in listing


# a two-conv network to check the weighted sums by hand: conv a occurs 3 times, conv b once
TWO = shapes.Workload("two-convs", "two convs", (
    (shapes.ConvShape("two-a", 1, 2, 6, 6, 2, 3, 3, padding=(1, 1)), 3),
    (shapes.ConvShape("two-b", 1, 2, 6, 6, 4, 1, 1), 1)))
TIMES = {  # (shape, op): (torch ms, auto ms)
    ("two-a", "conv_fwd"): (1.0, 2.0), ("two-a", "conv_bwd_input"): (2.0, 2.0),
    ("two-a", "conv_bwd_weight"): (3.0, 5.0),
    ("two-b", "conv_fwd"): (10.0, 5.0), ("two-b", "conv_bwd_input"): (10.0, 5.0),
    ("two-b", "conv_bwd_weight"): (10.0, 5.0)}


def _row(shape, op, impl, ms, status="ok", choice=None):
    row = dict.fromkeys(harness.ROW_FIELDS)
    row.update(shape=shape, op=op, impl=impl, status=status, median_ms=ms,
               auto_choice=choice if impl == "auto" else None)
    return row


def _rows(times, impls=("torch", "auto")):
    return [_row(s, op, impl, ms[impls.index(impl)], choice="im2col" if s == "two-a" else
                 "direct")
            for (s, op), ms in times.items() for impl in impls]


def test_weighted_sum_and_excess_ranking_by_hand():
    s = weighted.network_summary(_rows(TIMES), TWO, "auto")
    assert s["torch_ms"] == 3 * (1 + 2 + 3) + 30 == 48
    assert s["convkit_ms"] == 3 * (2 + 2 + 5) + 15 == 42
    assert s["ratio"] == pytest.approx(42 / 48) and s["complete"] and not s["missing"]
    top = weighted.largest_excess(s)
    # a bwd-weight 3 x (5 - 3) = 6, a fwd 3 x (2 - 1) = 3; a bwd-input and every b pass are not
    # slower than torch
    assert [(t["shape"], t["op"], t["excess_ms"]) for t in top] == [
        ("two-a", "conv_bwd_weight", 6.0), ("two-a", "conv_fwd", 3.0)]
    assert top[0]["auto_choice"] == "im2col"
    assert weighted.combined_choice([t for t in s["terms"] if t["shape"] == "two-a"]) == "im2col"
    mixed = [{"op": "conv_fwd", "auto_choice": "direct"},
             {"op": "conv_bwd_weight", "auto_choice": "im2col"}]
    assert weighted.combined_choice(mixed) == "fwd:direct w:im2col"


def test_weighted_sum_needs_every_row_and_says_what_it_covered():
    rows = _rows(TIMES)
    rows[-1]["status"] = "FAILED validation"             # two-b bwd-weight, auto
    s = weighted.network_summary(rows, TWO, "auto")
    assert s["ratio"] is None and s["missing"] == [("two-b", "conv_bwd_weight")]
    fwd_only = weighted.network_summary(
        [r for r in _rows(TIMES) if r["op"] == "conv_fwd"], TWO, "auto")
    assert fwd_only["ops"] == ["conv_fwd"] and not fwd_only["complete"]
    assert fwd_only["ratio"] == pytest.approx((3 * 2 + 5) / (3 * 1 + 10))
    fused = [_row(name, "conv_fwd_bwd", impl, ms) for name, impl, ms in (
        ("two-a", "torch", 6.0), ("two-a", "auto", 9.0), ("two-b", "torch", 30.0),
        ("two-b", "auto", 15.0))]
    s = weighted.network_summary(fused, TWO, "auto")
    assert s["complete"] and s["ops"] == ["conv_fwd_bwd"]
    assert s["ratio"] == pytest.approx(42 / 48)
    assert weighted.network_summary(fused, TWO, "direct") is None


def test_resnet18_goal_line_and_table_from_fabricated_rows():
    w = shapes.WORKLOADS["resnet18-convs"]
    # torch 1 ms per pass everywhere; auto 1 ms, except the stem's bwd-weight at 3 ms:
    # torch total 20 x 3 = 60 ms, auto 62 ms
    rows = []
    for s in w.shapes:
        for op in weighted.PASS_OPS:
            slow = s.name == "r18-stem" and op == "conv_bwd_weight"
            rows += [_row(s.name, op, "torch", 1.0), _row(s.name, op, "auto", 3.0 if slow else 1.0,
                                                          choice="direct")]
    checks = {t: (m, ok) for t, m, ok in report.target_checks(rows)}
    measured, met = checks["ResNet-18 convs fwd+bwd <= 1.1x torch (weighted)"]
    assert measured == f"weighted {62 / 60:.3g}x" and met == "yes"
    assert not any(t.startswith("ResNet-50") for t in checks)
    text = report.network_tables(rows)
    assert "Weighted resnet18-convs, auto: sum of count x (fwd + bwd-input + bwd-weight) = 62 ms " \
        "vs torch 60 ms = 1.03x" in text
    assert re.search(r"1\. r18-stem bwd-weight: \+2 ms \(x1, 1 -> 3 ms, 3x, direct\)", text)
    line = next(ln for ln in text.splitlines() if ln.startswith("r18-l1-3x3-64-64 "))
    assert line.split()[1] == "4"
    md = report.network_tables(rows, markdown=True)
    assert "| r18-stem | 1 | N8 C3 224x224 K64 7x7 s2 p3 | 1 / 1 (1x) | 1 / 1 (1x) | " \
        "1 / 3 (3x) | +2 | direct |" in md
    rows[1]["median_ms"] = 20.0                          # stem fwd: auto 20 ms, now 81 vs 60
    assert report.target_checks(rows)[0][2] == "no"


def test_cli_reports_a_workload_weighted_in_the_same_run(tmp_path, monkeypatch, capsys):
    """A real run of a tiny two-conv workload: the JSON's weighted total is count x median of
    the rows the same run wrote, and the printed line shows it."""
    monkeypatch.setitem(shapes.WORKLOADS, TWO.name, TWO)
    out = tmp_path / "r.json"
    argv = ["--shapes", "two-convs", "--ops", "conv_fwd", "conv_bwd_input", "conv_bwd_weight",
            "--algorithms", "auto", "--interleave", "--min-time", "0", "--reps", "2",
            "--json", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    result = json.load(open(out))
    (net,) = [n for n in result["networks"] if n["workload"] == "two-convs"]
    med = {(r["shape"], r["op"], r["impl"]): r["median_ms"] for r in result["rows"]}
    for impl, key in (("torch", "torch_ms"), ("auto", "convkit_ms")):
        expected = sum(n * med[(s.name, op, impl)] for s, n in TWO.convs
                       for op in weighted.PASS_OPS)
        assert net[key] == pytest.approx(expected, rel=1e-12)
    assert net["complete"] and net["ratio"] == pytest.approx(net["convkit_ms"] / net["torch_ms"])
    assert f"= {report._ratio(net['ratio'])}x" in printed
    assert "Weighted two-convs, auto" in printed
