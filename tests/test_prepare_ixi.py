"""Tests for data/prepare_ixi.py on small synthetic head phantoms (no network, no real data).

The phantom is defined analytically in world (RAS, mm) coordinates, so T1 and T2 can be sampled on
different voxel grids and orientations - as in IXI, where T1 is sagittal and T2 axial - and T2 can
be moved by a known rigid transform that the registration has to recover.
"""

import csv
import hashlib
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# The data-preparation extras (requirements-data.txt) are optional for students; CI installs them.
nib = pytest.importorskip("nibabel", reason="data-prep extras not installed: pip install -r requirements-data.txt")
sitk = pytest.importorskip("SimpleITK", reason="data-prep extras not installed: pip install -r requirements-data.txt")

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "data" / "prepare_ixi.py"
sys.path.insert(0, str(REPO))
from data import prepare_ixi as prep  # noqa: E402

# Tissue classes, outside to inside: (name, centre RAS mm, semi-axes mm, T1 value, T2 value).
# T2 contrast is inverted for fluid and white matter, as in real T1/T2 pairs. The head is clearly
# narrower left-right than top-bottom, like a real one; a near-spherical head would leave the roll
# angle poorly defined and make the registration test a test of the phantom.
IXI_TISSUES = [
    ("scalp", (0, 0, 0), (56, 78, 68), 0.80, 0.45),
    ("nose", (0, 74, -30), (10, 14, 14), 0.80, 0.45),
    ("skull", (0, 0, 0), (51, 73, 63), 0.05, 0.05),
    ("grey", (0, 0, 0), (47, 69, 59), 0.50, 0.65),
    ("white", (0, 0, 2), (38, 58, 48), 0.72, 0.35),
    ("ventricle_r", (8, 6, 10), (5, 18, 10), 0.15, 0.95),
    ("ventricle_l", (-8, 6, 10), (5, 18, 10), 0.15, 0.95),
]
# A vertical fluid-filled cylinder in the patient's right-posterior white matter: dark on T1,
# bright on T2. It breaks the head's symmetry, so it shows the display orientation and pairing.
IXI_MARKER_RA = (22.0, -28.0)
IXI_MARKER_RADIUS = 8.0
IXI_MARKER_Z = (-35.0, 45.0)


def ixi_soft(distance):
    """Partial-volume edge about 1 mm wide (sub-voxel registration needs smooth edges)."""
    return 1.0 / (1.0 + np.exp(-np.clip(distance, -50, 50) / 0.7))


def ixi_phantom(points_ras, modality):
    """Phantom intensity at (N, 3) RAS points in mm."""
    column = 3 if modality == "T1" else 4
    value = np.zeros(len(points_ras))
    for tissue in IXI_TISSUES:
        centre, axes = np.array(tissue[1], float), np.array(tissue[2], float)
        r = np.sqrt((((points_ras - centre) / axes) ** 2).sum(axis=1))
        inside = ixi_soft((1 - r) * axes.min())
        value = value * (1 - inside) + tissue[column] * inside
    radial = np.hypot(points_ras[:, 0] - IXI_MARKER_RA[0], points_ras[:, 1] - IXI_MARKER_RA[1])
    lo, hi = IXI_MARKER_Z
    inside = ixi_soft(IXI_MARKER_RADIUS - radial) * ixi_soft(points_ras[:, 2] - lo) * ixi_soft(hi - points_ras[:, 2])
    return value * (1 - inside) + (0.15 if modality == "T1" else 1.0) * inside


def ixi_rotation(degrees_xyz):
    rx, ry, rz = np.radians(degrees_xyz)
    x = np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
    y = np.array([[np.cos(ry), 0, np.sin(ry)], [0, 1, 0], [-np.sin(ry), 0, np.cos(ry)]])
    z = np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
    return z @ y @ x


def ixi_volume(shape, spacing, axes_ras, oblique_deg, motion=None, modality="T1", seed=0):
    """NIfTI image sampling the phantom on a grid; axes_ras maps voxel axes to world axes.

    motion = (R, t): the head moved so that anatomy at x (T1 world) is at R x + t (T2 world);
    the image then shows the phantom at R^-1 (p - t).
    """
    shape, spacing = np.array(shape), np.array(spacing, float)
    rotation = ixi_rotation(oblique_deg) @ np.array(axes_ras, float)
    affine = np.eye(4)
    affine[:3, :3] = rotation * spacing
    affine[:3, 3] = -affine[:3, :3] @ ((shape - 1) / 2)  # grid centred on the world origin
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    if motion is not None:
        rot, shift = motion
        world = (world - shift) @ rot  # row-vector form of R^T (p - t)
    data = ixi_phantom(world, modality).reshape(shape)
    data += np.random.default_rng(seed).normal(0, 0.01, data.shape)
    return nib.Nifti1Image(np.clip(data * 1000, 0, None).astype(np.int16), affine)


# T1: sagittal-like (voxel axes A, S, L... here P, I, R permuted) 2.6 x 2.4 x 3.0 mm;
# T2: axial (L, A, S) 2.5 x 2.5 x 3.2 mm, a different grid and obliquity, moved by a known motion.
IXI_T1_GRID = dict(shape=(66, 62, 52), spacing=(2.6, 2.4, 3.0),
                   axes_ras=[[0, 0, 1], [-1, 0, 0], [0, -1, 0]], oblique_deg=(6, 0, 0))
IXI_T2_GRID = dict(shape=(60, 70, 50), spacing=(2.5, 2.5, 3.2),
                   axes_ras=[[-1, 0, 0], [0, 1, 0], [0, 0, 1]], oblique_deg=(-5, 2, 0))


def ixi_motion(index):
    """A different, known head motion between the T1 and T2 scans for each subject."""
    rng = np.random.default_rng(100 + index)
    return ixi_rotation(rng.uniform(-5, 5, 3)), rng.uniform(-5, 5, 3)


def ixi_write_subject(folder, subject, modalities=("T1", "T2"), index=0):
    folder.mkdir(parents=True, exist_ok=True)
    if "T1" in modalities:
        nib.save(ixi_volume(**IXI_T1_GRID, modality="T1", seed=index),
                 folder / f"{subject}-T1.nii.gz")
    if "T2" in modalities:
        nib.save(ixi_volume(**IXI_T2_GRID, motion=ixi_motion(index), modality="T2", seed=50 + index),
                 folder / f"{subject}-T2.nii.gz")


IXI_PAIRED = ["IXI010-Guys-0001", "IXI011-HH-0002", "IXI012-IOP-0003", "IXI013-Guys-0004"]


@pytest.fixture(scope="module")
def ixi_raw(tmp_path_factory):
    """IXI-like release: 4 paired subjects, one with T1 only and one with T2 only."""
    root = tmp_path_factory.mktemp("ixi_raw")
    for i, subject in enumerate(IXI_PAIRED):
        ixi_write_subject(root, subject, index=i)
    ixi_write_subject(root, "IXI020-HH-0005", modalities=("T1",), index=5)
    ixi_write_subject(root, "IXI021-IOP-0006", modalities=("T2",), index=6)
    return root


IXI_ARGS = ["--pairs", "18", "--slices-per-subject", "5", "--test-fraction", "0.25", "--seed", "3"]


@pytest.fixture(scope="module")
def ixi_prepared(ixi_raw, tmp_path_factory):
    """One run of the command on the phantom release, with its stderr."""
    out = tmp_path_factory.mktemp("ixi_out") / "ixi2000"
    result = subprocess.run([sys.executable, str(SCRIPT), "--t1", str(ixi_raw), "--t2", str(ixi_raw),
                             "--out", str(out), *IXI_ARGS], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return out, result.stderr


class Hashes(dict):
    """{relative path: sha256}, with .dirs = {relative path: file} for a closer look."""


def ixi_hashes(out):
    files = {str(p.relative_to(out)): p for p in sorted(out.rglob("*")) if p.is_file()
             and p.name not in ("prepare_ixi.json", "manifest.csv")}  # manifest.csv names the input paths
    h = Hashes({k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in files.items()})
    h.dirs = files
    return h


def assert_same_dataset(got, want):
    """Same files; T1 slices, registration.csv and the split byte-identical; registered T2 slices (and
    the preview) equal up to registration noise: ITK's multi-threaded Mattes MI sums its samples in
    another order now and then (measured: 2 of 6 reruns of one subject on a 2-core AMD EPYC), which moves
    some resampled T2 pixels by a gray level or two while the rounded transform stays the same."""
    assert set(got) == set(want), sorted(set(got) ^ set(want))
    for name in sorted(got):
        if got[name] == want[name]:
            continue
        assert name.startswith(("trainB/", "testB/")) or name == "preview.png", name
        a, b = (np.asarray(Image.open(d), dtype=np.int16) for d in (got.dirs[name], want.dirs[name]))
        assert a.shape == b.shape and np.abs(a - b).mean() < 1.0, (name, np.abs(a - b).mean())


def ixi_manifest(out):
    with open(out / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def ixi_run(argv, capsys):
    code = prep.main([str(a) for a in argv])
    return code, capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# Registration
# ------------------------------------------------------------------------------------------------

def test_ixi_registration_recovers_known_rigid_motion(tmp_path):
    ixi_write_subject(tmp_path, "IXI099-Guys-0099", index=9)
    t1 = prep.load_volume(prep.Source(tmp_path / "IXI099-Guys-0099-T1.nii.gz"))
    t2 = prep.load_volume(prep.Source(tmp_path / "IXI099-Guys-0099-T2.nii.gz"))
    rotation, shift = ixi_motion(9)

    transform, _ = prep.register_rigid(t1, t2, seed=0)

    # Compare where brain points land, in ITK's LPS world: expected x -> R x + t (given in RAS).
    flip = np.diag([-1.0, -1.0, 1.0])
    grid = np.stack(np.meshgrid(*[np.linspace(-40, 40, 5)] * 3, indexing="ij"), -1).reshape(-1, 3)
    expected = (grid @ rotation.T + shift) @ flip
    found = np.array([transform.TransformPoint(tuple(p)) for p in grid @ flip])
    before = np.linalg.norm(grid @ flip - expected, axis=1).max()
    error_mm = np.linalg.norm(found - expected, axis=1).max()
    found_rotation = np.array(transform.GetMatrix()).reshape(3, 3)
    residual = found_rotation.T @ (flip @ rotation @ flip)
    error_deg = np.degrees(np.arccos(np.clip((np.trace(residual) - 1) / 2, -1, 1)))

    assert before > 5, "the phantom motion should be large enough to matter"
    assert error_mm < 1.0, f"max point error {error_mm:.2f} mm"
    assert error_deg < 1.0, f"rotation error {error_deg:.2f} deg"


def test_ixi_nifti_geometry_matches_nibabel(tmp_path):
    """RAS (nibabel) -> LPS (ITK) conversion: a voxel lands on the same world point in both."""
    image = ixi_volume(**IXI_T2_GRID)
    nib.save(image, tmp_path / "x-T2.nii.gz")
    volume = prep.load_volume(prep.Source(tmp_path / "x-T2.nii.gz"))
    ijk = (7, 31, 12)
    ras = image.affine[:3, :3] @ ijk + image.affine[:3, 3]
    lps = np.array(volume.TransformIndexToPhysicalPoint(ijk))
    np.testing.assert_allclose(lps, ras * [-1, -1, 1], atol=1e-3)
    assert sitk.GetArrayViewFromImage(volume)[ijk[::-1]] == image.get_fdata()[ijk]


# ------------------------------------------------------------------------------------------------
# Pairing and split
# ------------------------------------------------------------------------------------------------

def test_ixi_pairing_by_subject_reports_single_modality(ixi_raw, capsys):
    t1 = prep.find_modality(ixi_raw, "T1", "ixi")
    t2 = prep.find_modality(ixi_raw, "T2", "ixi")
    paired = prep.pair_subjects(t1, t2)
    err = capsys.readouterr().err
    assert paired == IXI_PAIRED
    assert "IXI020-HH-0005" in err and "no T2" in err
    assert "IXI021-IOP-0006" in err and "no T1" in err


def test_ixi_split_is_by_subject_seeded_and_keeps_the_fraction():
    subjects = [f"IXI{i:03d}-Guys-{i:04d}" for i in range(100)]
    split = prep.assign_splits(subjects, 0.2, seed=7)
    assert sorted(s for s, _ in split) == subjects  # every subject exactly once
    assert sum(part == "test" for _, part in split) == 20
    assert split == prep.assign_splits(list(reversed(subjects)), 0.2, seed=7)  # input order irrelevant
    assert split != prep.assign_splits(subjects, 0.2, seed=8)
    # Any prefix (what a smaller --pairs uses) keeps about the same fraction.
    for n in (5, 10, 37):
        assert abs(sum(part == "test" for _, part in split[:n]) - 0.2 * n) <= 0.5
    assert all(part == "train" for _, part in prep.assign_splits(subjects, 0.0, seed=7))


# ------------------------------------------------------------------------------------------------
# The whole command
# ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_ixi_outputs_are_paired_pngs_split_by_subject(ixi_prepared):
    out, stderr = ixi_prepared
    rows = ixi_manifest(out)
    assert len(rows) == 18
    assert "IXI020-HH-0005" in stderr and "IXI021-IOP-0006" in stderr  # single-modality report
    splits_of = {}
    for row in rows:
        splits_of.setdefault(row["subject"], set()).add(row["split"])
        assert row["filename"] == f"{row['subject']}_s{int(row['slice']):03d}.png"
        assert row["t1_source"].endswith(f"{row['subject']}-T1.nii.gz")
        assert row["t2_source"].endswith(f"{row['subject']}-T2.nii.gz")
    assert all(len(s) == 1 for s in splits_of.values()), "a subject is in both train and test"
    assert sorted(splits_of) == IXI_PAIRED
    assert {s for (s,) in splits_of.values()} == {"train", "test"}
    # --pairs 18 with --test-fraction 0.25: round(4.5) = 5 test pairs, from the test subject only
    assert sum(r["split"] == "test" for r in rows) == 5
    for split in ("train", "test"):
        names_a = sorted(p.name for p in (out / f"{split}A").iterdir())
        names_b = sorted(p.name for p in (out / f"{split}B").iterdir())
        assert names_a == names_b == sorted(r["filename"] for r in rows if r["split"] == split)
        for name in names_a:
            for side in "AB":
                with Image.open(out / f"{split}{side}" / name) as img:
                    assert img.size == (256, 256) and img.mode == "L"
    assert (out / "preview.png").is_file()


@pytest.mark.slow
def test_ixi_slices_show_same_anatomy_anterior_up_patient_right_on_left(ixi_prepared, ixi_raw):
    """The marker sits in the patient's right-posterior brain: it must appear left of and below the
    head centre, dark in T1 and bright in T2 of the SAME pair (correct registration and pairing)."""
    out, _ = ixi_prepared
    checked = 0
    for row in ixi_manifest(out):
        # Height of this slice in the world, from the same grid the command used.
        t1 = prep.load_volume(prep.Source(ixi_raw / f"{row['subject']}-T1.nii.gz"))
        grid = prep.canonical_axial_grid(t1, 1.0)
        z_mm = grid.TransformIndexToPhysicalPoint((128, 128, int(row["slice"])))[2]
        if not -5 <= z_mm <= 38:  # well inside the marker and above the nose
            continue
        a = np.asarray(Image.open(out / f"{row['split']}A" / row["filename"]), float)
        b = np.asarray(Image.open(out / f"{row['split']}B" / row["filename"]), float)
        rows_, cols = np.nonzero(a > 25)
        cy, cx = (rows_.min() + rows_.max()) / 2, (cols.min() + cols.max()) / 2  # head centre, 1 mm px
        right, anterior = IXI_MARKER_RA
        expected = (int(round(cy - anterior)), int(round(cx - right)))  # anterior up, right on left
        mirrored = (int(round(cy - anterior)), int(round(cx + right)))  # the other hemisphere
        window = lambda img, c: img[c[0] - 3:c[0] + 4, c[1] - 3:c[1] + 4].mean()  # noqa: E731
        assert window(a, expected) < 0.6 * window(a, mirrored), row["filename"]  # T1: fluid dark
        assert window(b, expected) > window(b, mirrored) + 60, row["filename"]   # T2: fluid bright
        checked += 1
    assert checked >= 5, "too few slices crossed the marker for the check to mean anything"


@pytest.mark.slow
def test_ixi_rerun_resumes_and_reproduces_identical_files(ixi_prepared, ixi_raw, tmp_path, capsys):
    out, _ = ixi_prepared
    work = tmp_path / "copy"
    shutil.copytree(out, work)
    before = ixi_hashes(work)
    argv = ["--t1", ixi_raw, "--t2", ixi_raw, "--out", work, *IXI_ARGS]

    code, err = ixi_run(argv, capsys)  # nothing to do: every subject is reused
    assert code == 0 and "4 subject(s) reused" in err
    assert ixi_hashes(work) == before

    # An interrupted run: one subject's PNG is missing -> only that subject is redone, identically.
    victim = ixi_manifest(work)[0]
    (work / f"{victim['split']}B" / victim["filename"]).unlink()
    (work / "trainA" / "IXI999-Guys-9999_s001.png").write_bytes(b"stale")  # from an older run
    code, err = ixi_run(argv, capsys)
    assert code == 0 and "3 subject(s) reused" in err and "1 stale PNG(s) removed" in err
    assert_same_dataset(ixi_hashes(work), ixi_hashes(out))  # out: the untouched original


@pytest.mark.slow
def test_ixi_reads_official_tar_archives(ixi_prepared, ixi_raw, tmp_path, capsys):
    """IXI ships IXI-T1.tar and IXI-T2.tar; reading them directly gives the same dataset."""
    for modality in ("T1", "T2"):
        with tarfile.open(tmp_path / f"IXI-{modality}.tar", "w") as tar:
            for f in sorted(ixi_raw.glob(f"*-{modality}.nii.gz")):
                tar.add(f, arcname=f.name)
    out = tmp_path / "from_tar"
    code, err = ixi_run(["--t1", tmp_path / "IXI-T1.tar", "--t2", tmp_path / "IXI-T2.tar",
                         "--out", out, *IXI_ARGS], capsys)
    assert code == 0, err
    assert_same_dataset(ixi_hashes(out), ixi_hashes(ixi_prepared[0]))
    assert ixi_manifest(out)[0]["t1_source"].startswith(str(tmp_path / "IXI-T1.tar") + ":")


# ------------------------------------------------------------------------------------------------
# Errors: one bilingual message, exit code 2, never a traceback
# ------------------------------------------------------------------------------------------------

@pytest.fixture()
def ixi_small(tmp_path):
    """Copy of one paired subject, cheap to break in different ways."""
    folder = tmp_path / "raw"
    ixi_write_subject(folder, "IXI030-Guys-0030", index=3)
    return folder


def ixi_expect_error(argv, capsys, *needles):
    code, err = ixi_run(argv, capsys)
    assert code == 2, err
    assert "错误 / Error:" in err and "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def test_ixi_error_missing_input(tmp_path, capsys):
    ixi_expect_error(["--t1", tmp_path / "nope", "--t2", tmp_path, "--out", tmp_path / "o"], capsys,
                     "does not exist", str(tmp_path / "nope"))


def test_ixi_error_no_matching_files_and_swapped_arguments(ixi_small, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not MRI")
    ixi_expect_error(["--t1", empty, "--t2", ixi_small, "--out", tmp_path / "o"], capsys,
                     "no T1 files found")
    t2_only = tmp_path / "t2only"
    t2_only.mkdir()
    shutil.copy(ixi_small / "IXI030-Guys-0030-T2.nii.gz", t2_only)
    ixi_expect_error(["--t1", t2_only, "--t2", ixi_small, "--out", tmp_path / "o"], capsys,
                     "swapped")


def test_ixi_error_tar_without_t1_files(ixi_small, tmp_path, capsys):
    with tarfile.open(tmp_path / "IXI-T1.tar", "w") as tar:
        tar.add(ixi_small / "IXI030-Guys-0030-T2.nii.gz", arcname="IXI030-Guys-0030-T2.nii.gz")
    ixi_expect_error(["--t1", tmp_path / "IXI-T1.tar", "--t2", ixi_small, "--out", tmp_path / "o"],
                     capsys, "no T1 files found", "IXI-T1.tar")
    (tmp_path / "broken.tar").write_bytes(b"this is not a tar archive" * 40)
    ixi_expect_error(["--t1", tmp_path / "broken.tar", "--t2", ixi_small, "--out", tmp_path / "o"],
                     capsys, "nor a readable .tar archive")


def test_ixi_error_corrupt_nifti_and_skip_bad(ixi_small, tmp_path, capsys):
    good = ixi_small / "IXI030-Guys-0030-T1.nii.gz"
    bad = ixi_small / "IXI031-Guys-0031-T1.nii.gz"
    bad.write_bytes(good.read_bytes()[:5000])  # truncated download
    shutil.copy(ixi_small / "IXI030-Guys-0030-T2.nii.gz", ixi_small / "IXI031-Guys-0031-T2.nii.gz")
    argv = ["--t1", ixi_small, "--t2", ixi_small, "--pairs", "10", "--seed", "1"]
    # seed 1 happens to put IXI031 first, so the corrupt file stops the run before any output
    assert prep.assign_splits(["IXI030-Guys-0030", "IXI031-Guys-0031"], 0.2, 1)[0][0] == "IXI031-Guys-0031"
    ixi_expect_error([*argv, "--out", tmp_path / "o1"], capsys, "cannot read", bad.name, "--skip-bad")

    code, err = ixi_run([*argv, "--out", tmp_path / "o2", "--skip-bad"], capsys)
    assert code == 0 and "skipping IXI031-Guys-0031" in err
    assert {r["subject"] for r in ixi_manifest(tmp_path / "o2")} == {"IXI030-Guys-0030"}


@pytest.mark.slow
def test_ixi_error_output_folder_problems(ixi_small, tmp_path, capsys):
    base = ["--t1", ixi_small, "--t2", ixi_small, "--test-fraction", "0", "--pairs", "4"]
    (tmp_path / "file").write_text("x")
    ixi_expect_error([*base, "--out", tmp_path / "file"], capsys, "is a file")

    foreign = tmp_path / "foreign"
    (foreign / "trainA").mkdir(parents=True)
    (foreign / "trainA" / "someone_else.png").write_bytes(b"png")
    ixi_expect_error([*base, "--out", foreign], capsys, "not made by this script", "--overwrite")

    out = tmp_path / "ours"
    assert prep.main([str(a) for a in [*base, "--out", out]]) == 0
    ixi_expect_error([*base[:-1], "5", "--out", out], capsys, "different settings", "pairs")
    capsys.readouterr()
    assert prep.main([str(a) for a in [*base[:-1], "5", "--out", out, "--overwrite"]]) == 0
    assert len(ixi_manifest(out)) == 5

    (out / "manifest.csv").write_text("filename,subject\nbroken\n")
    ixi_expect_error([*base[:-1], "5", "--out", out], capsys, "damaged", "--overwrite")


def test_ixi_bad_option_value_is_a_bilingual_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        prep.main(["--t1", str(tmp_path), "--t2", str(tmp_path), "--test-fraction", "1.5"])
    assert exc.value.code == 2
    assert "错误 / Error:" in capsys.readouterr().err


def test_ixi_cli_prints_one_message_not_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--t1", str(tmp_path / "missing"),
                             "--t2", str(tmp_path), "--out", str(tmp_path / "o")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("错误 / Error:") and "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------------------
# Download (offline: the URLs are pointed at local files)
# ------------------------------------------------------------------------------------------------

def test_ixi_download_fetches_once_and_reports_failures(tmp_path, monkeypatch, capsys):
    assert prep.IXI_URLS["T1"] == "http://biomedic.doc.ic.ac.uk/brain-development/downloads/IXI/IXI-T1.tar"
    assert prep.IXI_URLS["T2"] == "http://biomedic.doc.ic.ac.uk/brain-development/downloads/IXI/IXI-T2.tar"
    server = tmp_path / "server"
    server.mkdir()
    for modality in ("T1", "T2"):
        (server / f"IXI-{modality}.tar").write_bytes(modality.encode() * 1000)
    monkeypatch.setattr(prep, "IXI_URLS", {m: (server / f"IXI-{m}.tar").as_uri() for m in ("T1", "T2")})
    paths = prep.download_ixi(tmp_path / "dl")
    assert paths["T1"].read_bytes() == b"T1" * 1000 and paths["T2"].name == "IXI-T2.tar"
    assert not list((tmp_path / "dl").glob("*.part"))

    (server / "IXI-T1.tar").unlink()  # second call must not need the server
    assert prep.download_ixi(tmp_path / "dl") == paths

    with pytest.raises(prep.PrepError, match="downloading .* failed"):
        prep.download_ixi(tmp_path / "dl2")
