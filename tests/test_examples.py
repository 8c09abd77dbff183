"""Every script in examples/ runs and prints the chapter's results as computed by convkit.

Expected values are the hand-checked numbers from the chapter's own code (see each example's
docstring for where the chapter's printed text differs).
"""
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(name, capsys, *argv):
    assert load(name).main(list(argv)) == 0
    return capsys.readouterr().out


def number_after(label, text):
    return float(re.search(re.escape(label) + r"\s*=?\s*([-0-9.e+]+)", text).group(1))


def is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_edge_detection_5x5(capsys):
    out = run("edge_detection_5x5", capsys)
    assert "computed output [[0, 18, -18], [27, 41, -17], [-21, -13, -5]]" in out
    assert "Sum: 0" in out
    assert "printed 'Sum: -13'" in out
    assert "[[-13, -15, -12], [-8, -9, -6], [-5, -6, 0]]" in out


def test_output_sizes(capsys):
    out = run("output_sizes", capsys)
    sizes = re.findall(r"-> Output: (\d+)x\d+ \(convkit conv2d produced (\d+)x", out)
    assert sizes == [("26", "26"), ("28", "28"), ("14", "14"), ("32", "32"), ("32", "32")]


def test_conv2d_layers(capsys):
    out = run("conv2d_layers", capsys, "--batch", "1")
    assert "+ 16 = 448" in out and "+ 64 = 1,792" in out
    assert "Output size: [1, 16, 28, 28]" in out and "Output size: [1, 64, 224, 224]" in out
    gaps = [float(g) for g in re.findall(r"conv2d\| = ([-0-9.e+]+)", out)]
    assert len(gaps) == 2 and max(gaps) < 1e-4


def test_parameter_counts(capsys):
    out = run("parameter_counts", capsys)
    for count in ("= 896", "= 18,496", "= 73,856", "= 295,168", "= 9,472", "= 2,359,808"):
        assert count in out
    assert "Fully connected (224x224x3 -> 1000): 150,529,000" in out
    assert "Reduction: 99.9988%" in out
    assert "Total parameters: 421,642" in out and "prints 421,066, 576 short" in out
    assert "9,472 + 73,856 + 295,168 = 378,496" in out
    assert "1,792 + 36,928 + 36,928 = 75,648" in out and "Reduction: 99.95%" in out


def test_simple_cnn(capsys):
    out = run("simple_cnn", capsys)
    assert "pool2    [1, 64, 7, 7]  (chapter diagram: 5x5)" in out
    assert "flatten  [1, 3136]  (chapter diagram: 1600)" in out
    assert "logits   [1, 10]" in out


def test_receptive_field(capsys):
    out = run("receptive_field", capsys)
    assert "Final receptive field: 16x16 pixels (measured with convkit's conv2d backward: 16x16)" \
        in out
    assert "MaxPool (2x2)            16x16            11x11" in out
    assert "3 layers: 7x7 (measured 7x7)" in out and "4 layers: 9x9 (measured 9x9)" in out


def test_filters_match_scipy_symmetric_boundary(tmp_path, capsys):
    ex = load("filters")
    for image in (ex.load_digit(0), ex.TEST_PATTERN):
        ours = ex.apply_kernels(image)
        reference = ex.scipy_reference(image)
        if reference is None:
            pytest.skip("scipy not installed")
        for name in ex.KERNELS:
            np.testing.assert_allclose(ours[name], reference[name], rtol=0, atol=1e-12)
    out = run("filters", capsys, "--out", str(tmp_path))
    assert is_png(tmp_path / "filters.png")
    assert out.count("max |convkit - scipy correlate2d symm|") == 10


def test_filters_digit_is_the_raw_mnist_image():
    ex = load("filters")
    digit = ex.load_digit(0)
    assert digit.shape == (28, 28) and digit.max() <= 255 and digit.min() == 0


def test_activations(tmp_path, capsys):
    out = run("activations", capsys, "--out", str(tmp_path))
    assert "ReLU:         [0. 0. 0. 1. 2.]" in out
    assert "d ReLU / dx:  [0. 0. 0. 1. 1.]" in out
    assert is_png(tmp_path / "activations.png")


def test_conv_relu_block(capsys):
    out = run("conv_relu_block", capsys, "--size", "32")
    assert "Output size: [1, 64, 32, 32]" in out and "its minimum is 0.0" in out
    assert number_after("max |output - torch conv2d+relu|", out) < 1e-4
    assert number_after("max |input grad - torch's input grad|", out) < 1e-3


def test_translation(capsys):
    out = run("translation", capsys)
    assert "Euclidean distance: 2.45" in out
    assert number_after("conv(original)[:, :-1]|", out) < 1e-12


def test_train_mnist(capsys):
    # the chapter's training run with every conv, ReLU and pool on convkit: it learns (test loss
    # below chance's ln 10 = 2.303 after two batches) and is the run torch's own layers give
    # (same seed: losses to a rounding, accuracy within one of the 100 test images)
    argv = ("--epochs", "1", "--limit-batches", "2", "--test-size", "100")
    out = run("train_mnist", capsys, *argv)
    assert "Epoch 1/1" in out and "Training complete!" in out
    ref = run("train_mnist", capsys, *argv, "--backend", "torch")
    for label, tol in (("Train Loss:", 1e-3), ("Test Loss:", 1e-3), ("Train Acc:", 1.0),
                       ("Test Acc:", 1.0)):
        got, want = number_after(label, out), number_after(label, ref)
        assert abs(got - want) <= tol, f"{label} convkit {got}, torch's layers {want}"
    assert number_after("Test Loss:", out) < 2.25


def test_feature_maps_train_then_load(tmp_path, capsys):
    out = run("feature_maps", capsys, "--out", str(tmp_path), "--limit-batches", "2",
              "--test-size", "100")
    assert "conv1  [1, 32, 28, 28]" in out and "pool2  [1, 64, 7, 7]" in out
    for png in ("filters_random.png", "filters_trained.png", "feature_maps_conv1.png",
                "feature_maps_conv2.png"):
        assert is_png(tmp_path / png)
    again = tmp_path / "again"
    out = run("feature_maps", capsys, "--out", str(again), "--checkpoint",
              str(tmp_path / "run" / "model.pt"))
    assert "loaded" in out and is_png(again / "feature_maps_conv1.png")


def test_every_example_has_a_test():
    tested = {name[len("test_"):] for name in globals() if name.startswith("test_")}
    scripts = {p.stem for p in EXAMPLES.glob("*.py")}
    missing = {s for s in scripts if not any(t.startswith(s) for t in tested)}
    assert not missing, f"examples without a test: {sorted(missing)}"


def test_examples_use_convkit_kernels():
    for path in EXAMPLES.glob("*.py"):
        text = path.read_text()
        assert "from convkit" in text, path.name
