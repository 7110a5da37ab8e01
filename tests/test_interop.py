"""The official relabel format: import a folder written by the official script, replay it, export it back."""
from pathlib import Path

import pytest
import torch
import torchvision

from sre2l.core import Sre2lError
from sre2l.presets import make_config
from sre2l.data import DATASETS, DatasetSpec, IMAGENET_MEAN, IMAGENET_STD, register_dataset, read_distilled
from sre2l.recover import import_distilled
from sre2l.relabel import import_official_labels, export_official_labels, read_official_batch
from sre2l.replay import load_epoch, epoch_file, replay_batch

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "official-relabel"  # written by the official script

if "official-fixture" not in DATASETS:  # the fixture: 10 ImageNet-shaped classes of 10 images
    register_dataset(DatasetSpec("official-fixture", 10, 224, 3, IMAGENET_MEAN, IMAGENET_STD, None, "tests/fixtures"))

SETTINGS = ["data.name=official-fixture", "recover.ipc=10", "relabel.epochs=2", "relabel.batch_size=32",
            "relabel.order=official"]


@pytest.fixture
def imported(tmp_path):
    cfg = make_config("sre2l_in1k", SETTINGS)
    import_distilled(FIXTURE / "images", cfg, tmp_path)
    return cfg, tmp_path


def test_import_needs_trust_and_matching_settings(imported):
    cfg, run_dir = imported
    with pytest.raises(Sre2lError, match="--trust-pickle"):
        import_official_labels(FIXTURE / "labels", cfg, run_dir)
    wrong = make_config("sre2l_in1k", SETTINGS + ["relabel.batch_size=64", "relabel.mix=mixup"])
    with pytest.raises(Sre2lError, match="relabel.batch_size=64 but the folder has 32; relabel.mix='mixup' but the folder has 'cutmix'"):
        import_official_labels(FIXTURE / "labels", wrong, run_dir, trust_pickle=True)


def test_imported_batches_replay_to_the_official_logits(imported):
    cfg, run_dir = imported
    manifest = import_official_labels(FIXTURE / "labels", cfg, run_dir, trust_pickle=True)
    assert manifest["stored_batches"] == 8 and manifest["complete_epochs"] == 2 and manifest["images"] == 100
    torch.manual_seed(0)  # the teacher the fixture was written with: torchvision ResNet-18, random init after seed 0
    teacher = torchvision.models.resnet18().eval()
    images = read_distilled(run_dir / "recover" / "images").images
    spec = DATASETS["official-fixture"]
    for epoch in range(2):
        stored = load_epoch(epoch_file(run_dir / "relabel" / "labels", epoch))
        assert [len(p.indices) for p, _ in stored] == [32, 32, 32, 4]
        assert sorted(torch.cat([p.indices for p, _ in stored]).tolist()) == list(range(100))
        for plan, logits in stored[:2]:
            with torch.no_grad(): fresh = teacher(replay_batch(images, plan, spec, 224))
            scale = logits.float().std()  # the bound is relative: the difference grows with the logits' scale
            assert (fresh - logits.float()).abs().max() < 0.01 * scale  # fp16 storage, PIL vs grid-sample resizing
            wrong = plan.__class__(plan.indices.roll(1), *list(plan.__dict__.values())[1:])
            with torch.no_grad(): assert (teacher(replay_batch(images, wrong, spec, 224)) - logits.float()).abs().max() > 0.1


def test_export_writes_the_official_files_back(imported, tmp_path):
    cfg, run_dir = imported
    import_official_labels(FIXTURE / "labels", cfg, run_dir, trust_pickle=True)
    target = export_official_labels(run_dir, tmp_path / "exported")
    for epoch in range(2):
        for batch in range(4):
            name = f"epoch_{epoch}/batch_{batch}.tar"
            original = read_official_batch(FIXTURE / "labels" / name, trust_pickle=True)
            exported = read_official_batch(target / name, trust_pickle=True)
            for a, b in zip(original, exported):
                if isinstance(a, torch.Tensor): assert torch.equal(a, b)
                elif isinstance(a, list): assert [int(v) for v in a] == [int(v) for v in b]
                else: assert abs(a - b) < 1e-6


def test_command_line_import_and_export(tmp_path):
    from conftest import run, tool
    import sys
    # the fixture's data set is registered in this process only, so drive the CLI through a tiny script
    script = tmp_path / "cli.py"
    script.write_text("import sys\nfrom sre2l.data import register_dataset, DatasetSpec, IMAGENET_MEAN, IMAGENET_STD\n"
                      "register_dataset(DatasetSpec('official-fixture', 10, 224, 3, IMAGENET_MEAN, IMAGENET_STD))\n"
                      "from sre2l.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    common = ["--preset", "sre2l_in1k", "--run-dir", str(tmp_path / "run"), *sum((["--set", s] for s in SETTINGS), [])]
    assert run([sys.executable, script, "import-images", FIXTURE / "images", *common]).returncode == 0
    refused = run([sys.executable, script, "import-labels", FIXTURE / "labels", *common])
    assert refused.returncode == 2 and "--trust-pickle" in refused.stderr
    assert run([sys.executable, script, "import-labels", FIXTURE / "labels", *common, "--trust-pickle"]).returncode == 0
    exported = run([sys.executable, script, "export-labels", "--run-dir", tmp_path / "run", "--to", tmp_path / "out"])
    assert exported.returncode == 0 and (tmp_path / "out" / "epoch_1" / "batch_3.tar").is_file()
