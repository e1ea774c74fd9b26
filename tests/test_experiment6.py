"""The reference script: its public contract, its error messages, a short real training run, the CLI."""
import csv
import inspect
import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import experiment6 as ex
from conftest import ROOT, run_script

# ---------------------------------------------------------------------------------------------
# The public contract: the template, the handout and the grader depend on these exact names.
# ---------------------------------------------------------------------------------------------

CONTRACT = {
    "PairedMedicalDataset": "(t1_dir, t2_dir)",
    "Generator": "()",
    "Discriminator": "()",
    "build_losses": "()",
    "build_optimizers": "(G, D, lr=0.0002, betas=(0.5, 0.999))",
    "train_step": "(G, D, t1, t2, criterion_GAN, criterion_L1, optimizer_G, optimizer_D, lambda_l1=100.0)",
    "visualize": "(G, dataset, device, path, indices=(0,), title=None)",
    "main": "(argv=None)",
}


@pytest.mark.parametrize("name,signature", CONTRACT.items())
def test_contract_signatures(name, signature):
    assert str(inspect.signature(getattr(ex, name))) == signature


def test_train_signature_starts_with_contract():
    params = list(inspect.signature(ex.train).parameters)
    assert params[:5] == ["G", "D", "dataloader", "epochs", "device"]
    assert list(inspect.signature(ex.Discriminator.forward).parameters) == ["self", "x1", "x2"]


# ---------------------------------------------------------------------------------------------
# Step 1: dataset
# ---------------------------------------------------------------------------------------------

def _write_pair_folder(root, names, size=(64, 48), mode="L"):
    for sub, value in (("A", 40), ("B", 200)):
        d = root / sub
        d.mkdir(parents=True, exist_ok=True)
        for i, n in enumerate(names):
            v = value + i
            Image.new(mode, size, color=(v, v, v) if mode == "RGB" else v).save(d / n)
    return root / "A", root / "B"


def test_dataset_items_shape_range_and_pairing(tmp_path):
    # Listing order on disk is arbitrary; pairing must follow the sorted names.
    a, b = _write_pair_folder(tmp_path, ["s2.png", "s0.png", "s1.png"], mode="RGB")
    (a / "notes.txt").write_text("not an image")
    ds = ex.PairedMedicalDataset(str(a), str(b))
    assert len(ds) == 3
    for i in range(3):
        t1, t2 = ds[i]
        for t in (t1, t2):
            assert t.shape == (1, 256, 256) and t.dtype == torch.float32
            assert -1.0 <= t.min() and t.max() <= 1.0
        # s<i> was drawn with value base + index in the name order s0, s1, s2 given above (s2 first).
        expected_offset = {0: 1, 1: 2, 2: 0}[i]
        assert round((t1.mean().item() * 0.5 + 0.5) * 255) == pytest.approx(40 + expected_offset, abs=1)
        assert round((t2.mean().item() * 0.5 + 0.5) * 255) == pytest.approx(200 + expected_offset, abs=1)


def test_dataset_on_phantoms_is_in_range(tiny_data):
    ds = ex.PairedMedicalDataset(str(tiny_data / "trainA"), str(tiny_data / "trainB"))
    t1, t2 = ds[0]
    assert t1.min() >= -1 and t1.max() <= 1 and t1.max() > 0.5 and t1.min() < -0.9
    assert not torch.equal(t1, t2)


# ---------------------------------------------------------------------------------------------
# Step 2: networks
# ---------------------------------------------------------------------------------------------

def test_generator_and_discriminator_shapes_and_ranges():
    G, D = ex.Generator(), ex.Discriminator()
    x = torch.rand(2, 1, 256, 256) * 2 - 1
    y = G(x)
    assert y.shape == (2, 1, 256, 256) and y.min() >= -1 and y.max() <= 1
    p = D(x, y)
    assert p.shape == (2, 1, 63, 63) and p.min() > 0 and p.max() < 1
    # The discriminator must look at both images: changing either one changes its verdict.
    assert not torch.allclose(D(x, y), D(x, torch.zeros_like(y)))
    assert not torch.allclose(D(x, y), D(torch.zeros_like(x), y))


def test_handout_architecture_parameter_counts():
    count = lambda m: sum(p.numel() for p in m.parameters())
    # Conv(1,64,4) + Conv(64,128,4) + BN(128) + ConvT(128,64,4) + BN(64) + ConvT(64,1,4)
    assert count(ex.Generator()) == (1 * 64 * 16 + 64) + (64 * 128 * 16 + 128) + 256 + (128 * 64 * 16 + 64) + 128 + (64 * 16 + 1)
    assert count(ex.Discriminator()) == (2 * 64 * 16 + 64) + (64 * 128 * 16 + 128) + 256 + (128 * 16 + 1)


# ---------------------------------------------------------------------------------------------
# Step 3 and 4: losses, optimizers, one training step, a short training run
# ---------------------------------------------------------------------------------------------

def test_losses_and_optimizers():
    crit_gan, crit_l1 = ex.build_losses()
    assert isinstance(crit_gan, torch.nn.BCELoss) and isinstance(crit_l1, torch.nn.L1Loss)
    G, D = ex.Generator(), ex.Discriminator()
    opt_g, opt_d = ex.build_optimizers(G, D, lr=1e-3)
    for opt, net in ((opt_g, G), (opt_d, D)):
        assert isinstance(opt, torch.optim.Adam)
        assert opt.param_groups[0]["lr"] == 1e-3 and opt.param_groups[0]["betas"] == (0.5, 0.999)
        assert {id(p) for p in opt.param_groups[0]["params"]} == {id(p) for p in net.parameters()}


def _handout_step(G, D, t1, t2, opt_g, opt_d):
    """The handout's Step 4 body, written out independently, as the trusted reference."""
    bce, l1 = torch.nn.BCELoss(), torch.nn.L1Loss()
    fake = G(t1)
    pf = D(t1, fake)
    loss_g = bce(pf, torch.ones_like(pf)) + 100 * l1(fake, t2)
    opt_g.zero_grad(); loss_g.backward(); opt_g.step()
    pr = D(t1, t2)
    pf = D(t1, fake.detach())
    loss_d = 0.5 * (bce(pr, torch.ones_like(pr)) + bce(pf, torch.zeros_like(pf)))
    opt_d.zero_grad(); loss_d.backward(); opt_d.step()
    return loss_g.item(), loss_d.item()


@pytest.mark.slow
def test_train_step_matches_handout_exactly():
    t1, t2 = torch.rand(1, 1, 256, 256) * 2 - 1, torch.rand(1, 1, 256, 256) * 2 - 1
    runs = []
    for step in (ex.train_step, None):
        torch.manual_seed(1)
        G, D = ex.Generator(), ex.Discriminator()
        opt_g, opt_d = ex.build_optimizers(G, D)
        if step is None:
            losses = [_handout_step(G, D, t1, t2, opt_g, opt_d) for _ in range(2)]
        else:
            losses = [step(G, D, t1, t2, *ex.build_losses(), opt_g, opt_d) for _ in range(2)]
        runs.append((losses, [p.detach().clone() for p in [*G.parameters(), *D.parameters()]]))
    assert all(isinstance(v, float) for pair in runs[0][0] for v in pair)
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


@pytest.mark.slow
def test_short_training_lowers_l1(tiny_data):
    torch.manual_seed(0)
    ds = ex.PairedMedicalDataset(str(tiny_data / "trainA"), str(tiny_data / "trainB"))
    loader = torch.utils.data.DataLoader(ds, batch_size=1, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    G, D = ex.Generator(), ex.Discriminator()
    history = ex.fit(G, D, loader, 4, torch.device("cpu"), progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["L1"] < 0.6 * history[0]["L1"]
    assert all(np.isfinite([h["loss_G"], h["loss_D"]]).all() for h in history)


@pytest.mark.slow
def test_fp32_driver_reproduces_the_handout_exactly(tiny_data, capsys):
    """--precision fp32: Step 4's train() and main()'s fit() (with its uint8 cache) update G and D bit for
    bit as the handout's own loop does."""
    ds = ex.PairedMedicalDataset(str(tiny_data / "trainA"), str(tiny_data / "trainB"))
    results = []
    for path in ("handout", "train", "fit"):
        torch.manual_seed(5)
        G, D = ex.Generator(), ex.Discriminator()
        opt_g, opt_d = ex.build_optimizers(G, D)
        loader = torch.utils.data.DataLoader(ex.cache_in_memory(ds, progress=False) if path == "fit" else ds)
        if path == "fit":
            ex.fit(G, D, loader, 1, torch.device("cpu"), optimizer_G=opt_g, optimizer_D=opt_d,
                   precision="fp32", progress=False)
        elif path == "train":
            ex.train(G, D, loader, 1, torch.device("cpu"))
        else:
            for t1, t2 in loader:
                _handout_step(G, D, t1, t2, opt_g, opt_d)
        results.append([p.detach().clone() for p in [*G.parameters(), *D.parameters()]])
    assert all(torch.equal(a, b) for a, b in zip(results[0], results[1]))
    assert all(torch.equal(a, b) for a, b in zip(results[0], results[2]))
    assert "Epoch 1/1 | Loss_G: " in capsys.readouterr().out  # train() prints as the handout does


def test_step4_train_picks_cuda_else_cpu_and_calls_train_step(tiny_data, monkeypatch):
    """Step 4's loop: no device given -> the handout's CUDA -> CPU choice; every batch goes to train_step."""
    ds = ex.PairedMedicalDataset(str(tiny_data / "trainA"), str(tiny_data / "trainB"))
    seen = []
    monkeypatch.setattr(ex.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(ex, "train_step", lambda G, D, t1, *rest, **kw: seen.append(t1.device.type) or (1.0, 0.5))
    G = ex.train(ex.Generator(), ex.Discriminator(), torch.utils.data.DataLoader(ds, batch_size=2), 2)
    assert seen == ["cpu"] * 6 and next(G.parameters()).device.type == "cpu"
    source = inspect.getsource(ex.train)
    assert 'torch.device("cuda" if torch.cuda.is_available() else "cpu")' in source


def test_cache_is_exact(tiny_data):
    ds = ex.PairedMedicalDataset(str(tiny_data / "testA"), str(tiny_data / "testB"))
    cached = ex.cache_in_memory(ds, progress=False)
    assert cached.tensors[0].dtype == torch.uint8  # compact storage
    for i in range(len(ds)):
        for a, b in zip(ds[i], cached[i]):
            assert torch.equal(a, ex.decode_cached(b))


@pytest.mark.slow
def test_autocast_wrapper_returns_fp32_and_keeps_probabilities_open():
    D = ex.Discriminator()
    wrapped = ex.Autocast(D, "cpu", torch.bfloat16)
    x = torch.rand(1, 1, 256, 256) * 2 - 1
    out = wrapped(x, x)
    assert out.dtype == torch.float32 and out.shape == (1, 1, 63, 63)
    # Logits pushed far out: the fp32 Sigmoid keeps them strictly inside (0, 1) unlike a bf16 one.
    with torch.no_grad():
        D.model[-2].bias.fill_(6.0)
    assert wrapped(x, x).max() < 1.0


def test_precision_choice():
    cpu = torch.device("cpu")
    assert ex.pick_precision("fp32", cpu) == "fp32"
    assert ex.pick_precision("auto", cpu) == ("bf16" if ex.cpu_has_native_bf16() else "fp32")
    with pytest.raises(ex.DataError):
        ex.pick_precision("fp16", cpu)
    # The default path uses the faster NHWC layout; only an explicit fp32 keeps the handout's NCHW.
    assert ex.use_channels_last("auto", cpu) and ex.use_channels_last("bf16", cpu)
    assert not ex.use_channels_last("fp32", cpu)
    assert not ex.use_channels_last("auto", torch.device("mps"))


# ---------------------------------------------------------------------------------------------
# Step 5 and metrics
# ---------------------------------------------------------------------------------------------

def test_visualize_writes_three_panel_png(tiny_data, tmp_path):
    ds = ex.PairedMedicalDataset(str(tiny_data / "testA"), str(tiny_data / "testB"))
    G = ex.Generator()
    path = ex.visualize(G, ds, torch.device("cpu"), str(tmp_path / "fig.png"), indices=[0, 1])
    img = np.asarray(Image.open(path).convert("L"), dtype=float)
    assert img.shape[1] > img.shape[0]  # wider than tall for 3 columns x 2 rows
    assert img.std() > 10
    assert G.training  # visualize leaves the model ready for more training


def test_metrics_perfect_and_floor():
    real = torch.rand(2, 1, 64, 64)
    m = ex.image_metrics(real.clone(), real, real)
    assert m["mae"].max() == 0 and m["ssim"].min() > 0.999 and m["psnr"].min() > 90
    worse = ex.image_metrics((real + 0.1).clamp(0, 1), real, real)
    assert 15 < worse["psnr"].mean() < 25 and worse["ssim"].mean() < 1


def test_evaluate_shortcuts_do_not_change_scores(tiny_data):
    """The per-epoch evaluation reads the uint8 cache, uses small batches, channels_last input and skips
    the (constant) floor: the scores must be those of the plain PNG dataset, batch 8, NCHW."""
    ds = ex.PairedMedicalDataset(str(tiny_data / "testA"), str(tiny_data / "testB"))
    torch.manual_seed(0)
    G = ex.Generator()
    plain = ex.evaluate(G, ds, torch.device("cpu"), batch_size=8)
    assert set(plain) == {"model", "t1_as_t2"}
    G.to(memory_format=torch.channels_last)
    fast = ex.evaluate(G, ex.cache_in_memory(ds, progress=False), torch.device("cpu"), floor=False,
                       memory_format=torch.channels_last)
    assert set(fast) == {"model"}
    for k, v in plain["model"].items():
        assert fast["model"][k] == pytest.approx(v, abs=2e-5), k
    assert plain["t1_as_t2"]["psnr"] < 30  # the floor was really computed (T1 is not T2)


# ---------------------------------------------------------------------------------------------
# Import hygiene and the command line
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_import_has_no_side_effects(tmp_path):
    r = run_script(["-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); import experiment6"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and list(tmp_path.iterdir()) == []


def _missing(tmp_path, tiny_data):
    return tmp_path / "does-not-exist", "does-not-exist"


def _no_testB(tmp_path, tiny_data):
    d = tmp_path / "no_testB"
    shutil.copytree(tiny_data, d)
    shutil.rmtree(d / "testB")
    return d, "testB"


def _no_pngs(tmp_path, tiny_data):
    d = tmp_path / "empty"
    for s in ("trainA", "trainB", "testA", "testB"):
        (d / s).mkdir(parents=True)
    return d, ".png"


def _names_do_not_match(tmp_path, tiny_data):
    d = tmp_path / "mismatch"
    shutil.copytree(tiny_data, d)
    first = sorted((d / "trainB").iterdir())[0]
    first.rename(d / "trainB" / "zz_renamed.png")
    return d, first.name


def _corrupt_png(tmp_path, tiny_data):
    d = tmp_path / "corrupt"
    shutil.copytree(tiny_data, d)
    victim = sorted((d / "testA").iterdir())[1]
    victim.write_bytes(victim.read_bytes()[:60])  # a truncated download
    return d, victim.name


@pytest.mark.slow
@pytest.mark.parametrize("make_bad_data", [_missing, _no_testB, _no_pngs, _names_do_not_match, _corrupt_png],
                         ids=lambda f: f.__name__.strip("_"))
def test_bad_data_gives_one_clear_message_naming_it_and_exit_2(make_bad_data, tmp_path, tiny_data):
    root, must_mention = make_bad_data(tmp_path, tiny_data)
    r = run_script([ROOT / "experiment6.py", "--data-root", root, "--epochs", "1", "--out", tmp_path / "o",
                    "--no-progress"], cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert "Error" in r.stderr and "错误" in r.stderr
    assert must_mention in r.stderr, r.stderr


@pytest.mark.slow
def test_cli_end_to_end_and_resume(tmp_path, tiny_data):
    out = tmp_path / "run"
    args = [ROOT / "experiment6.py", "--data-root", tiny_data, "--out", out, "--no-progress", "--seed", "1"]
    r = run_script([*args, "--epochs", "1"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Epoch 1/1" in r.stdout
    for name in ("results.png", "loss_curves.png", "history.csv", "metrics.json", "checkpoint.pt"):
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    for key in ("mae", "psnr", "psnr_masked", "ssim"):
        assert np.isfinite(metrics["test"][key]) and np.isfinite(metrics["t1_as_t2"][key])
    assert metrics["train_samples_per_second"] > 0 and metrics["precision"] in ("fp32", "bf16")

    r = run_script([*args, "--epochs", "2", "--resume"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "1 epochs done" in r.stdout and "Epoch 2/2" in r.stdout and "Epoch 1/2" not in r.stdout
    with open(out / "history.csv", encoding="utf-8") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2"]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and set(ckpt) >= {"G", "D", "optimizer_G", "optimizer_D", "args"}


def test_default_data_falls_back_to_phantoms(tmp_path, monkeypatch, capsys):
    """main() takes its data folder from resolve_data_root(args.data_root): in a working directory
    without dataset/ixi2000 that is the kit's phantoms, generated idempotently and said. (Training
    itself is test_cli_end_to_end_and_resume's, on small phantoms: a full phantom epoch is ~90 s.)"""
    monkeypatch.chdir(tmp_path)
    root = ex.resolve_data_root(None)
    said = capsys.readouterr().out
    assert "synthetic" in said and "phantoms" in said and "未找到" in said
    assert root == ROOT / "data" / "phantoms" and (root / "phantoms.json").exists()
    ds = ex.PairedMedicalDataset(str(root / "trainA"), str(root / "trainB"))
    assert len(ds) > 0 and [tuple(t.shape) for t in ds[0]] == [(1, 256, 256)] * 2
    assert len(os.listdir(root / "testA")) == len(os.listdir(root / "testB")) > 0
    # an explicit --data-root is never replaced by the phantoms (a missing one is reported by the caller)
    assert ex.resolve_data_root(str(tmp_path / "mine")) == tmp_path / "mine"


@pytest.mark.slow
def test_missing_checkpoint_on_resume_is_a_clear_error(tmp_path, tiny_data):
    r = run_script([ROOT / "experiment6.py", "--data-root", tiny_data, "--out", tmp_path / "o", "--resume",
                    "--no-progress"], cwd=tmp_path)
    assert r.returncode == 2 and "checkpoint" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------------------------------------
# DataLoader workers: none where a worker could not import the notebook's classes
# ---------------------------------------------------------------------------------------------

def test_default_num_workers(monkeypatch):
    import multiprocessing
    import types

    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # a device object only: no GPU needed
    script = types.ModuleType("__main__")
    script.__file__ = "student_template.py"
    monkeypatch.setitem(sys.modules, "__main__", script)
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    for method in ("fork", "spawn", "forkserver"):  # a script: a spawned worker re-imports it by its path
        monkeypatch.setattr(multiprocessing, "get_start_method", lambda allow_none=False, m=method: m)
        assert (ex.default_num_workers(cuda), ex.default_num_workers(cpu)) == (2, 0), method
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))  # no file to re-import
    assert ex.default_num_workers(cuda) == 0  # spawn (Windows, macOS, Linux with spawn)
    monkeypatch.setattr(multiprocessing, "get_start_method", lambda allow_none=False: "fork")
    assert ex.default_num_workers(cuda) == 2
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))  # inside Jupyter
    assert ex.default_num_workers(cuda) == 0


CRASHING_WORKER = """\
import sys
sys.path.insert(0, {root!r})
import torch
import experiment6 as ex
from torch.utils.data import DataLoader, Dataset


class NotebookDataset(Dataset):  # defined in a __main__ without a file, as in a notebook
    def __len__(self):
        return 2

    def __getitem__(self, i):
        return torch.zeros(1), torch.zeros(1)


def go():
    loader = DataLoader(NotebookDataset(), num_workers=1, multiprocessing_context="spawn")
    for _ in ex.batches_of(loader):
        pass
    return 0


sys.exit(ex.exit_code_of(go))
"""


@pytest.mark.slow
def test_a_crashed_dataloader_worker_says_pass_num_workers_0(tmp_path):
    """A spawned worker cannot import a class of a __main__ without a file (a notebook): the worker dies,
    and the run ends in one bilingual line saying --num-workers 0, exit code 2."""
    r = run_script(["-c", CRASHING_WORKER.format(root=str(ROOT))], cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr[-3000:])
    mine = r.stderr[r.stderr.index("错误 / Error:"):]  # what the main process says (the worker printed its own)
    assert "--num-workers 0" in mine and "重新运行" in mine and "Traceback" not in mine, mine


def test_batches_of_leaves_the_loops_own_errors_alone(tiny_data):
    ds = ex.PairedMedicalDataset(str(tiny_data / "trainA"), str(tiny_data / "trainB"))
    loader = torch.utils.data.DataLoader(ds, batch_size=3)
    assert sum(t1.size(0) for t1, _ in ex.batches_of(loader)) == 6
    with_worker = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1)
    with pytest.raises(RuntimeError, match="from train_step"):
        for _ in ex.batches_of(with_worker):
            raise RuntimeError("from train_step: DataLoader worker exited unexpectedly")  # not the loader's
