"""Training: convkit vs torch loss agreement step by step, determinism, and the CLI end to end."""
import json
import subprocess
import sys

import pytest
import torch

from convkit import cli
from convkit.bench import cli as bench_cli
from convkit.data import load_mnist
from convkit.models import load_checkpoint
from convkit.train import TrainConfig, evaluate, train

STEPS = 20


@pytest.fixture(scope="module")
def data():
    return load_mnist("mnist-5k")


def short_run(backend, data, steps=STEPS, **kw):
    config = TrainConfig(backend=backend, epochs=1, train_size=steps * 32, batch_size=32,
                         limit_batches=steps, test_size=100, progress=False, **kw)
    return train(config, data, log=lambda line: None)


def test_first_20_steps_convkit_matches_torch(data):
    """Same seed, data order and dropout masks: losses agree to float32 rounding."""
    ours, ref = short_run("convkit", data), short_run("torch", data)
    assert len(ours["step_losses"]) == len(ref["step_losses"]) == STEPS
    # reference: torch's own ops; observed max gap 2.4e-7 on losses of order 1
    torch.testing.assert_close(torch.tensor(ours["step_losses"]), torch.tensor(ref["step_losses"]),
                               rtol=1e-5, atol=1e-5)
    assert ref["step_losses"][-1] < 0.7 * ref["step_losses"][0]  # it is learning
    assert abs(ours["test_accuracy"] - ref["test_accuracy"]) <= 1.0


def test_same_seed_same_run_different_seed_different_run(data):
    a, b, c = (short_run("torch", data, steps=5, seed=s) for s in (1, 1, 2))
    assert a["step_losses"] == b["step_losses"]
    assert a["step_losses"] != c["step_losses"]


def test_config_validation():
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        TrainConfig(epochs=0).validate()
    with pytest.raises(ValueError, match="backend must be"):
        TrainConfig(backend="jax").validate()
    with pytest.raises(ValueError, match="lr must be positive"):
        TrainConfig(lr=0.0).validate()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda.is_available"):
            TrainConfig(device="cuda").validate()


SMOKE = ["train", "--epochs", "1", "--limit-batches", "2", "--train-size", "128",
         "--test-size", "64", "--batch-size", "32", "--no-progress"]


def test_cli_train_writes_checkpoint_metrics_and_plots(tmp_path, capsys, data):
    out, js = tmp_path / "run", tmp_path / "metrics.json"
    assert cli.main(SMOKE + ["--out", str(out), "--json", str(js), "--seed", "5"]) == 0
    printed = capsys.readouterr().out
    assert "421,642 parameters" in printed and "test accuracy" in printed
    metrics = json.loads(js.read_text())
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert [e["epoch"] for e in metrics["epochs"]] == [1]
    epoch = metrics["epochs"][0]
    assert {"train_loss", "train_accuracy", "test_accuracy", "seconds"} <= set(epoch)
    assert epoch["images"] == 64 and len(metrics["step_losses"]) == 2
    assert metrics["test_accuracy"] == epoch["test_accuracy"]
    assert metrics["config"]["backend"] == "convkit" and metrics["config"]["seed"] == 5
    for png in ("training_curve.png", "filters.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the checkpoint, evaluated independently with torch's layers, gives the reported accuracy
    model = load_checkpoint(out / "model.pt", backend="torch")
    assert evaluate(model, data.test.subset(64), torch.device("cpu"))["accuracy"] == pytest.approx(
        metrics["test_accuracy"])


def test_cli_compare_prints_both_backends(tmp_path, capsys):
    js = tmp_path / "cmp.json"
    assert cli.main(SMOKE + ["--compare", "--json", str(js)]) == 0
    printed = capsys.readouterr().out
    assert "convkit/torch" in printed and "time / epoch (s)" in printed
    result = json.loads(js.read_text())
    assert set(result["runs"]) == {"convkit", "torch"}
    assert result["compare"]["compared_steps"] == 2
    assert result["compare"]["max_step_loss_difference"] < 1e-5


def test_cli_progress_bar_shows_loss_and_throughput(capsys):
    argv = [a for a in SMOKE if a != "--no-progress"] + ["--backend", "torch"]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "epoch 1/1 [torch]" in err and "loss=" in err and "img/s" in err


def test_cli_bad_data_directory(tmp_path, capsys):
    assert cli.main(["train", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "t10k-images-idx3-ubyte" in err


def test_cli_rejects_bad_option_values(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--epochs", "0"])
    assert "must be a positive integer" in capsys.readouterr().err


def test_cli_bench_forwards_arguments(monkeypatch, capsys):
    """`convkit bench` is a subcommand with the options of `python -m convkit.bench`."""
    seen = []
    monkeypatch.setattr(bench_cli, "run", lambda args, argv: seen.append((args, argv)) or 0)
    assert cli.main(["bench", "--quick", "--device", "cpu", "--ops", "conv_fwd"]) == 0
    [(args, argv)] = seen
    assert args.quick and args.device == "cpu" and args.ops == ["conv_fwd"]
    assert argv == ["--quick", "--device", "cpu", "--ops", "conv_fwd"]
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: convkit bench [-h] [--quick]")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", "--no-such-option"])
    assert exit_.value.code == 2 and "--no-such-option" in capsys.readouterr().err
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command").choices["bench"]
    assert ({o for a in sub._actions for o in a.option_strings}
            == {o for a in bench_cli.build_parser()._actions for o in a.option_strings})


def test_python_dash_m_convkit():
    res = subprocess.run([sys.executable, "-m", "convkit", "train", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    for option in ("--backend", "--data", "--epochs", "--batch-size", "--lr", "--seed",
                   "--device", "--out", "--json", "--compare", "--limit-batches",
                   "--nproc-per-node", "--threads", "--dropout", "--deterministic", "--resume"):
        assert option in res.stdout
