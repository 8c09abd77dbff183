"""``convkit bench --model module:callable``: a user's model built, converted, checked against
torch, timed (forward, forward+backward) and timed layer by layer; tiny sizes and timings."""
import copy
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from convkit import cli
from convkit.bench import model as bench_model

FAST = ["--input-shape", "3,12,12", "--batch", "2", "--quick", "--min-time", "0.01",
        "--reps", "2"]


class TinyNet(nn.Module):
    """A user's model: converted modules (conv, in-place ReLU, max-pool), an F.relu call in
    forward, a layer convkit does not implement, and a tuple output."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.act = nn.SiLU()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = self.pool(self.relu(self.conv1(x)))
        x = self.act(F.relu(self.bn(self.conv2(x))))
        return self.fc(x.mean((2, 3))), x


def tiny():
    return TinyNet()


class Noisy(TinyNet):
    """Not the same model twice: its output moves with the random stream."""

    def forward(self, x):
        out, _ = super().forward(x)
        return out + torch.rand_like(out)


def test_model_bench_checks_times_and_reports_layers(tmp_path, capsys):
    path = tmp_path / "model.json"
    assert cli.main(["bench", "--model", "test_bench_model:tiny", *FAST, "--json", str(path),
                     "--markdown", str(tmp_path / "model.md")]) == 0
    result = json.loads(path.read_text())
    c = result["check"]
    assert c["ok"] and c["forward_rel_error"] < 1e-5 and c["float64_gradient_rel_error"] < 1e-12
    assert c["gradient_rel_error"] < 1e-3 and c["torch_gradient_rel_error"] < 1e-3
    rows = {(r["op"], r["impl"]): r for r in result["rows"]}
    assert set(rows) == {(op, impl) for op in ("forward", "fwd+bwd")
                         for impl in ("torch", "convkit")}
    for (_, impl), r in rows.items():
        assert r["status"] == "ok" and r["median_ms"] > 0 and r["reps"] >= 2
        assert r["shape"] == "tiny" and r["shape_desc"] == "N2 3x12x12 float32"
        assert (r["ratio"] is None) == (impl == "torch")
    layers = {r["layer"]: r for r in result["layers"]}
    assert set(layers) == {"conv1", "relu", "pool", "conv2"}
    assert layers["conv1"]["input"] == "2x3x12x12" and layers["conv1"]["calls"] == 1
    for r in layers.values():
        for key in ("torch_fwd_ms", "convkit_fwd_ms", "torch_bwd_ms", "convkit_bwd_ms"):
            assert r[key] > 0, (r["layer"], key)
        assert r["excess_ms"] == pytest.approx(r["convkit_fwd_ms"] + r["convkit_bwd_ms"]
                                               - r["torch_fwd_ms"] - r["torch_bwd_ms"])
    assert result["totals"]["convkit"]["step_ms"] > 0
    assert "SiLU" in result["conversion"] and "routed to convkit" in result["conversion"]
    out = capsys.readouterr().out
    for text in ("check against torch", "convkit / torch", "convkit layers",
                 "most time over torch first", "conv2 "):
        assert text in out
    markdown = (tmp_path / "model.md").read_text().splitlines()
    assert sum(line.startswith("|---|") for line in markdown) == 3  # three tables


def test_model_that_fails_the_check_is_not_timed(tmp_path, capsys):
    path = tmp_path / "model.json"
    assert cli.main(["bench", "--model", "test_bench_model:Noisy", *FAST, "--json",
                     str(path)]) == 1
    result = json.loads(path.read_text())
    assert not result["check"]["ok"] and result["rows"] == [] and result["layers"] == []
    assert "FAILED: not timed" in capsys.readouterr().out


def test_a_wrong_gradient_fails_the_check(monkeypatch):
    """Right forward, wrong backward in one converted layer: the float64 gradients catch it."""
    import convkit

    def relu_with_wrong_gradient(self, x):
        return convkit.functional.relu(x) + 0.5 * (x - x.detach())

    monkeypatch.setattr(convkit.nn.ReLU, "forward", relu_with_wrong_gradient)
    ref = TinyNet()
    model = convkit.convert(copy.deepcopy(ref))
    c = bench_model.check(ref, model, torch.randn(2, 3, 12, 12))
    assert c["forward_rel_error"] < 1e-5 and c["float64_gradient_rel_error"] > 1e-3
    assert not c["ok"]


def test_no_functional_leaves_forward_calls_on_torch(tmp_path):
    path = tmp_path / "model.json"
    assert cli.main(["bench", "--model", "test_bench_model:tiny", *FAST, "--no-functional",
                     "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    assert not result["functional"] and "stay on torch" in result["conversion"]


def test_shape_table_options_are_refused_with_model():
    with pytest.raises(SystemExit, match="--readme is for the shape table"):
        cli.main(["bench", "--model", "test_bench_model:tiny", "--readme", "README.md"])


def test_build_takes_modules_files_and_instances(tmp_path):
    assert isinstance(bench_model.build("test_bench_model:TinyNet"), TinyNet)
    source = tmp_path / "user_models.py"
    source.write_text("import torch.nn as nn\nnet = nn.Sequential(nn.Conv2d(3, 2, 1))\n"
                      "def make():\n    return nn.ReLU()\n")
    assert isinstance(bench_model.build(f"{source}:net"), nn.Sequential)
    assert isinstance(bench_model.build(f"{source}:make"), nn.ReLU)
    for bad in ("test_bench_model", "test_bench_model:FAST", f"{tmp_path}/none.py:make"):
        with pytest.raises(SystemExit):
            bench_model.build(bad)


def test_parse_shape():
    assert bench_model.parse_shape("3,224,224") == (3, 224, 224)
    assert bench_model.parse_shape("1x28x28") == (1, 28, 28)
    for bad in ("", "3,0,4", "a,b"):
        with pytest.raises(SystemExit):
            bench_model.parse_shape(bad)


@pytest.mark.slow
def test_torchvision_model(tmp_path):
    pytest.importorskip("torchvision")
    path = tmp_path / "model.json"
    assert cli.main(["bench", "--model", "torchvision:resnet18", "--input-shape", "3,64,64",
                     "--batch", "1", "--quick", "--min-time", "0.01", "--reps", "2", "--json",
                     str(path)]) == 0
    result = json.loads(path.read_text())
    assert len(result["layers"]) == 20 + 9 + 1  # convs, ReLU modules (one per block + stem), pool
