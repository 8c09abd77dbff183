"""convkit train on several ranks (torch.distributed, gloo), exact repeats, checkpoint/resume.

The multi-rank runs go through torch's own launcher in subprocesses; every run is a few steps on
a few hundred mnist-5k images so the file stays fast. References: a single process on the same
global batch (for the ranks), a second run of the same command in a fresh process (for the
repeat), the uninterrupted run (for resume).
"""
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from convkit import checkpoint, cli
from convkit.data import load_mnist
from convkit.train import TrainConfig, train

SMALL = ["--train-size", "128", "--test-size", "100", "--batch-size", "32",
         "--limit-batches", "3", "--no-progress", "--threads", "1"]
TIMING = {"seconds", "images_per_second"}


@pytest.fixture(scope="module")
def data():
    return load_mnist("mnist-5k")


def convkit_cmd(*args, launcher=(), env=None, timeout=600):
    """Run ``python [-m torch.distributed.run ...] -m convkit train ...``; return the result."""
    cmd = [sys.executable, *launcher, "-m", "convkit", "train", *args]
    full_env = dict(os.environ, **(env or {}))
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)
    return res


def ok(res):
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def metrics_of(path):
    return json.loads(Path(path).read_text())


def repeatable(m):
    """The metrics a repeat must reproduce bit for bit (not times, not the machine's load)."""
    return {"step_losses": m["step_losses"], "test_accuracy": m["test_accuracy"],
            "test_loss": m["test_loss"],
            "epochs": [{k: v for k, v in e.items() if k not in TIMING} for e in m["epochs"]]}


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def config_from(**kw):
    return TrainConfig(epochs=kw.pop("epochs", 2), train_size=128, test_size=100, batch_size=32,
                       limit_batches=3, progress=False, threads=1, **kw)


# --- several ranks ---------------------------------------------------------------------------

def test_two_ranks_match_one_process_on_the_same_global_batch(tmp_path, data):
    """gloo, 2 ranks x 16 images against one process x 32 (dropout off): the same images in every
    step, gradients averaged by DDP, so the losses agree to float32 rounding."""
    js, out = tmp_path / "two.json", tmp_path / "two"
    res = ok(convkit_cmd("--epochs", "2", "--dropout", "0", "--algorithm", "im2col", *SMALL,
                         "--nproc-per-node", "2", "--json", str(js), "--out", str(out)))
    assert res.stdout.count("test accuracy") == 1  # rank 0 alone prints
    two = metrics_of(js)
    assert two["distributed"] == {"world_size": 2, "backend": "gloo", "batch_per_rank": 16,
                                  "threads_per_rank": 1}
    one = train(config_from(dropout=0.0, algorithm="im2col"), data, out=tmp_path / "one",
                log=lambda line: None)
    assert len(two["step_losses"]) == len(one["step_losses"]) == 6
    # observed gap ~5e-7 (fp32 sums in another order); a wrong batch split is off by ~1e-2
    torch.testing.assert_close(torch.tensor(two["step_losses"]), torch.tensor(one["step_losses"]),
                               rtol=1e-5, atol=1e-5)
    for k, w in weights(out / "model.pt").items():
        torch.testing.assert_close(w, weights(tmp_path / "one" / "model.pt")[k], rtol=1e-4,
                                   atol=1e-5)
    assert [e["images"] for e in two["epochs"]] == [96, 96]
    assert abs(two["test_accuracy"] - one["test_accuracy"]) <= 1.0
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "filters.png",
                                                     "metrics.json", "model.pt",
                                                     "training_curve.png"]


def test_two_rank_resume_repeats_the_uninterrupted_run_bitwise(tmp_path):
    """Dropout on (each rank draws its own masks): 1 epoch under plain torchrun, then resumed
    for the 2nd with --nproc-per-node 2, equals the uninterrupted 2-epoch run bit for bit."""
    common = ["--dropout", "0.5", "--algorithm", "im2col", *SMALL]
    full, part = tmp_path / "full", tmp_path / "part"
    ok(convkit_cmd("--epochs", "2", *common, "--nproc-per-node", "2", "--out", str(full)))
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2")
    ok(convkit_cmd("--epochs", "1", *common, "--out", str(part), launcher=torchrun))
    ok(convkit_cmd("--epochs", "2", *common, "--nproc-per-node", "2", "--resume", str(part)))
    a, b = metrics_of(full / "metrics.json"), metrics_of(part / "metrics.json")
    assert b["resumed_after_epoch"] == 1 and len(b["step_losses"]) == 6
    assert repeatable(a) == repeatable(b)
    assert_same_weights(full / "model.pt", part / "model.pt")


def test_a_failing_rank_stops_the_run_with_its_error(tmp_path):
    """Rank 1 raises in its second optimizer step while rank 0 waits in the next all-reduce: the
    launcher stops rank 0 and names rank 1's error; nothing hangs."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    import torch\n"
        "    _step, _calls = torch.optim.Adam.step, []\n"
        "    def step(self, *a, **k):\n"
        "        _calls.append(1)\n"
        "        if len(_calls) == 2:\n"
        "            raise RuntimeError('injected failure on rank 1')\n"
        "        return _step(self, *a, **k)\n"
        "    torch.optim.Adam.step = step\n")
    start = time.monotonic()
    res = convkit_cmd("--epochs", "1", "--algorithm", "im2col", *SMALL, "--nproc-per-node", "2",
                      "--out", str(tmp_path / "out"), timeout=300,
                      env={"PYTHONPATH": os.pathsep.join(filter(None, [
                          str(hook), os.environ.get("PYTHONPATH")])),
                           "CONVKIT_DIST_TIMEOUT": "120"})
    assert res.returncode != 0
    assert "rank 1 of 2 failed" in res.stderr
    assert "RuntimeError: injected failure on rank 1" in res.stderr
    assert time.monotonic() - start < 250
    assert not (tmp_path / "out").exists()  # it died in epoch 1: no checkpoint yet


# --- exact repeats and resume in one process --------------------------------------------------

@pytest.mark.parametrize("algorithm", ["im2col", "direct", "auto"])
def test_same_command_same_seed_repeats_bitwise_in_fresh_processes(tmp_path, algorithm):
    # both at once (one thread each): the second run may not borrow anything from the first
    procs = [subprocess.Popen([sys.executable, "-m", "convkit", "train", "--epochs", "1",
                               "--algorithm", algorithm, "--seed", "3", *SMALL,
                               "--out", str(tmp_path / name)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("a", "b")]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    a, b = (metrics_of(tmp_path / name / "metrics.json") for name in ("a", "b"))
    assert repeatable(a) == repeatable(b)
    assert_same_weights(tmp_path / "a" / "model.pt", tmp_path / "b" / "model.pt")


def test_resume_repeats_the_uninterrupted_run(tmp_path, data):
    """Dropout on: the RNG state in the checkpoint decides the masks of the remaining steps."""
    config = config_from(epochs=3, algorithm="im2col")
    full = train(config, data, out=tmp_path / "full", log=lambda line: None)
    train(replace(config, epochs=1), data, out=tmp_path / "part", log=lambda line: None)
    torch.manual_seed(1234)  # whatever the process does in between must not matter
    resumed = train(config, data, resume=tmp_path / "part", log=lambda line: None)
    assert resumed["resumed_after_epoch"] == 1
    assert repeatable(resumed) == repeatable(full)
    assert_same_weights(tmp_path / "full" / "model.pt", tmp_path / "part" / "model.pt")
    ckpt = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 3 and ckpt["step"] == 9 and ckpt["world_size"] == 1
    assert set(ckpt["rng"][0]) == {"torch", "numpy", "python"}


def test_deterministic_flag_gives_the_same_run_and_is_undone(data):
    config = config_from(epochs=1, algorithm="im2col")
    plain = train(config, data, log=lambda line: None)
    strict = train(replace(config, deterministic=True), data, log=lambda line: None)
    assert repeatable(strict) == repeatable(plain)
    assert not torch.are_deterministic_algorithms_enabled()


# --- bad input: one line naming the argument, nothing written ---------------------------------

BAD = ["train", *SMALL, "--epochs", "2"]


def one_error_line(capsys):
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


def test_nproc_per_node_zero(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--nproc-per-node", "0"])
    assert e.value.code == 2
    assert "argument --nproc-per-node: must be a positive integer, got 0" in \
        capsys.readouterr().err


def test_batch_that_does_not_split_is_refused_before_any_rank_starts(capsys, tmp_path):
    argv = ["train", "--batch-size", "33", "--nproc-per-node", "2", "--out", str(tmp_path / "o")]
    assert cli.main(argv) == 2
    line = one_error_line(capsys)
    assert "--batch-size 33 does not split evenly across 2 ranks" in line
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data):
    """A 1-epoch run's output directory (checkpoint.pt, model.pt, ...)."""
    out = tmp_path_factory.mktemp("finished")
    train(config_from(epochs=1, algorithm="im2col"), data, out=out, log=lambda line: None)
    return out


def listing(path):
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir())


@pytest.mark.parametrize("damage, expected", [
    ("garbage", "is not a readable checkpoint"),
    ("truncated", "is not a readable checkpoint"),
    ("weights_only", "is not a convkit train checkpoint"),
    ("other_model", "holds a different model: fc1.weight has shape (128, 10)"),
    ("missing_entries", "is damaged: it lacks ['optimizer'"),
])
def test_resume_from_a_bad_checkpoint(tmp_path, capsys, finished, damage, expected):
    run = tmp_path / "run"
    run.mkdir()
    good = (finished / "checkpoint.pt").read_bytes()
    if damage == "garbage":
        (run / "checkpoint.pt").write_bytes(b"not a checkpoint at all")
    elif damage == "truncated":
        (run / "checkpoint.pt").write_bytes(good[: len(good) // 2])
    elif damage == "weights_only":
        (run / "checkpoint.pt").write_bytes((finished / "model.pt").read_bytes())
    else:
        ckpt = torch.load(finished / "checkpoint.pt", weights_only=True)
        if damage == "other_model":
            ckpt["model"]["fc1.weight"] = torch.zeros(128, 10)
        else:
            del ckpt["optimizer"]
        torch.save(ckpt, run / "checkpoint.pt")
    before = listing(run)
    for extra in ([], ["--nproc-per-node", "2"]):  # in the process, and before launching ranks
        assert cli.main(BAD + ["--resume", str(run), *extra]) == 2
        line = one_error_line(capsys)
        assert line.startswith(f"convkit train: error: --resume {run}") and expected in line
    assert listing(run) == before


@pytest.mark.parametrize("change, expected", [
    (["--batch-size", "16"], "--batch-size 32 (this command: 16)"),
    (["--seed", "7"], "--seed 0 (this command: 7)"),
    (["--epochs", "1"], "--epochs 1: the checkpoint in"),
    (["--nproc-per-node", "2"], "written by 1 rank(s), this run has 2"),
])
def test_resume_with_other_options(tmp_path, capsys, finished, change, expected):
    before = listing(finished)
    argv = BAD + ["--algorithm", "im2col", "--resume", str(finished)] + change
    assert cli.main(argv) == 2
    assert expected in one_error_line(capsys)
    assert listing(finished) == before


def test_resume_without_a_checkpoint(tmp_path, capsys):
    assert cli.main(BAD + ["--resume", str(tmp_path)]) == 2
    assert f"--resume {tmp_path}: no checkpoint.pt there" in one_error_line(capsys)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"old")

    def broken(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        checkpoint.atomic_write(path, broken)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    assert path.read_bytes() == b"old"


def test_the_launcher_names_the_rank_that_failed_first():
    """Its peers fail a moment later (connection closed by peer) and the launcher stops the rest
    with a signal: the summary names the first error."""
    from types import SimpleNamespace

    from convkit.distributed import first_failure

    def failed(exitcode, when, text):
        return SimpleNamespace(exitcode=exitcode, timestamp=int(when), message={
            "message": text, "extraInfo": {"time": when}} if text else "Signal 15")
    failures = {0: failed(1, 100.9, "RuntimeError: Connection closed by peer"),
                1: failed(1, 100.2, "RuntimeError: injected"), 2: failed(-15, 99.0, None)}
    assert first_failure(SimpleNamespace(failures=failures))[0] == 1
