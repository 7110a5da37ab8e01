"""The SRe2L family as methods of one engine: the registry, CDA's crop curriculum and RDED's selection, each compared
exactly with the official rule re-derived from its code, and every bad value refused before any work."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sre2l.core import ConfigError, RecoverConfig, config_dict
from sre2l.methods import METHODS, RECIPES, method_settings
from sre2l.presets import make_config
from sre2l.recover import crop_scale_bound
from sre2l.selection import choose_patches, realism_scores, stitch


def test_cda_crop_scale_bound_equals_the_official_rule():
    "CDA/recover_cda_in1k.py's min_crop, written as its code computes it, for every schedule, milestone and budget."
    def official(mode, t, milestone, iterations):
        min_crop = 0.08
        if t < milestone * iterations:
            if mode == "step": min_crop = 1.0
            elif mode == "linear": min_crop = 0.08 + (1.0 - 0.08) * (1 - t / (milestone * iterations))
            elif mode == "cosine": min_crop = 0.08 + (1.0 - 0.08) * (1 + np.cos(np.pi * t / (milestone * iterations))) / 2
        return min_crop
    for mode in ("step", "linear", "cosine"):
        for milestone in (0.0, 0.3, 0.5, 1.0):
            for iterations in (1, 9, 1000):
                rc = RecoverConfig(crop_schedule=mode, crop_milestone=milestone)  # scale (0.08, 1): the ImageNet presets'
                kit = [crop_scale_bound(t, iterations, rc) for t in range(iterations)]
                assert kit == [official(mode, t, milestone, iterations) for t in range(iterations)], (mode, milestone, iterations)
    assert crop_scale_bound(0, 100, RecoverConfig(crop_schedule="cosine")) == 0.08  # CDA's default milestone 0: no curriculum
    assert make_config("sre2l_in1k", ["method=cda"]).recover.crop_milestone == 1.0  # the value CDA's scripts pass


def _official_selector(n, model, images, labels, size, m):
    "LINs-lab/RDED synthesize/utils.py selector(), re-derived: [mipc, m] candidates -> the n kept patches, and its scores."
    s = images.shape
    flat = images.permute(1, 0, 2, 3, 4).reshape(s[0] * s[1], s[2], s[3], s[4])  # [m * mipc]: candidate-major
    vertical, horizontal = size - flat.size(2), size - flat.size(3)
    padded = F.pad(flat, (horizontal // 2, horizontal - horizontal // 2, vertical // 2, vertical - vertical // 2))
    with torch.no_grad(): preds = model(padded)
    probs = F.softmax(preds, dim=1)
    dist = (-torch.log(probs.gather(1, labels.repeat(m).view(-1, 1))))[:, 0].reshape(m, s[0])
    index = torch.argmin(dist, 0)
    best = dist[index, torch.arange(s[0])]
    chosen = flat.reshape(m, s[0], *s[2:])[index, torch.arange(s[0])]
    return chosen[torch.argsort(best, descending=False)[:n]], dist


def _official_mix(patches, out_size, factor, n):
    "RDED's mix_images() loop: cell (i, j) of every image k-th in row-major order gets patches[k * n: (k + 1) * n]."
    s = out_size // factor
    mixed = torch.zeros((n, patches.shape[1], out_size, out_size))
    k = 0
    for i in range(factor):
        for j in range(factor):
            mixed[:, :, i * s:(i + 1) * s, j * s:(j + 1) * s] = F.interpolate(patches[k * n:(k + 1) * n], size=(s, s))
            k += 1
    return mixed


def test_rded_scores_choice_top_k_and_stitching_equal_the_official_rule():
    torch.manual_seed(0)
    mipc, m, ipc, factor, size, label = 12, 3, 2, 2, 16, 4
    observer = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                             nn.Flatten(), nn.Linear(32, 10)).eval()
    patches = torch.randn(mipc, m, 3, size // factor, size // factor)  # normalised candidates [image, candidate]
    labels = torch.full((mipc,), label)
    kept_official, dist = _official_selector(ipc * factor ** 2, observer, patches, labels, size, m)
    scores = realism_scores(observer, patches.flatten(0, 1), labels.repeat_interleave(m), size, batch=mipc * m).view(mipc, m)
    assert torch.equal(scores, dist.t())  # the same scores, bit for bit
    images, chosen = choose_patches(scores, ipc * factor ** 2)
    kept = patches[images, chosen]
    assert torch.equal(kept, kept_official)  # each image's best candidate, then the best images, in order
    assert torch.equal(stitch(kept, ipc, factor, size), _official_mix(kept_official, size, factor, ipc))


def test_methods_inherit_and_lpld_presets_are_sre2l_plus_lpld():
    assert set(METHODS.names()) >= {"sre2l", "lpld", "cda", "rded"} and set(RECIPES.names()) >= {"sre2l", "rded", "edc", "dd-ranking"}
    for base, lpld in (("digits", "lpld_digits"), ("fashion-mnist", "lpld_fashion-mnist")):
        via_method, preset = config_dict(make_config(base, ["method=lpld"])), config_dict(make_config(lpld))
        assert {**via_method, "preset": lpld} == preset
    cda = make_config("fashion-mnist", ["method=cda"])
    plain = make_config("fashion-mnist")
    assert cda.squeeze == plain.squeeze and cda.relabel == plain.relabel and cda.validate == plain.validate  # inherited
    mine = make_config("fashion-mnist", ["recover.crop_milestone=0.5", "method=cda"])  # the user's value wins, wherever given
    assert mine.recover.crop_milestone == 0.5 and mine.recover.crop_schedule == "cosine"
    trained = make_config("fashion-mnist", ["method=rded", "recipe=sre2l"])
    assert trained.recover.method == "rded" and trained.validate.labels == "stored" and trained.recipe == "sre2l"
    assert method_settings("rded", "rded")[-1] == "recipe=rded"


@pytest.mark.parametrize("overrides, says", [
    (["method=rded", "recover.select_factor=3"], "does not divide the 28 px images"),
    (["method=rded", "recover.select_candidates=0"], "recover.select_candidates=0 is outside [1, 100000]"),
    (["method=rded", "recover.select_images=30"], "recover.select_images=30 is fewer"),
    (["method=cda", "recover.crop_milestone=1.5"], "recover.crop_milestone=1.5 is outside [0, 1]"),
    (["recipe=smal-batch"], "dd-ranking, edc, rded, sre2l"),
    (["method=cdaa"], "did you mean cda?"),
    (["method=cda", "recover.crop=false"], "needs recover.crop=true"),
])
def test_bad_method_values_are_refused_by_make_config(overrides, says):
    with pytest.raises(ConfigError, match=None) as error: make_config("fashion-mnist", overrides)
    assert says in str(error.value), str(error.value)


def _hashes(folder):
    import hashlib
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.png"))}


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    "A digits teacher (1 epoch) that the recover tests below share."
    from sre2l.squeeze import run_squeeze
    root = tmp_path_factory.mktemp("methods")
    run_squeeze(make_config("digits", ["squeeze.epochs=1", "device=cpu"]), root / "teacher")
    return root


def _recover(root, name, overrides):
    import shutil
    from sre2l.recover import run_recover
    cfg = make_config("digits", ["squeeze.epochs=1", "device=cpu", "recover.ipc=2", "recover.iterations=20", *overrides])
    run_dir = root / name
    run_dir.mkdir()
    shutil.copytree(root / "teacher" / "squeeze", run_dir / "squeeze")
    shutil.copy(root / "teacher" / "config.json", run_dir / "config.json")
    return cfg, run_dir, run_recover(cfg, run_dir)


def test_rded_selects_in_the_recover_stage_and_resumes_class_by_class(teacher_run):
    cfg, run_dir, manifest = _recover(teacher_run, "rded", ["method=rded", "recover.select_images=20", "recover.select_candidates=3"])
    images = run_dir / "recover" / "images"
    first = _hashes(images)
    assert manifest["images"] == 20 and len(first) == 20
    record = next((run_dir / "recover" / "units").glob("rded_3.json"))
    record.unlink(); next(images.glob("new003/*")).unlink()  # class 3 as a killed run leaves it
    (run_dir / "recover" / "manifest.json").unlink()  # not finished: the run resumes
    from sre2l.recover import run_recover
    run_recover(cfg, run_dir)
    assert _hashes(images) == first  # class 3 made again, the same: its crops come from the class's own seeded generator
    real = _recover(teacher_run, "real", ["recover.method=real"])[1]
    assert _hashes(real / "recover" / "images") != first


def test_cda_with_milestone_0_recovers_sre2l_images_and_with_1_others(teacher_run):
    sre2l = _hashes(_recover(teacher_run, "sre2l", [])[1] / "recover" / "images")
    off = _hashes(_recover(teacher_run, "cda-off", ["method=cda", "recover.crop_milestone=0"])[1] / "recover" / "images")
    cda = _hashes(_recover(teacher_run, "cda", ["method=cda"])[1] / "recover" / "images")
    assert off == sre2l and cda != sre2l and len(cda) == 20


def test_the_family_table_separates_synthesis_from_recipe(tmp_path):
    """family_ci as `.ci/run` made it (or made here): every cell measured, RDED's selection far cheaper than SRe2L's
    recovery, the RDED images under LPLD's 40x pruning measured, and the synthesis-against-recipe chart drawn."""
    import json
    from conftest import ROOT, run, tool
    from sre2l.plan import finished, plan_table
    from sre2l.tables import get_table
    spec = get_table("family_ci")
    runs = plan_table(spec, ROOT / "runs" / "reproduce")
    out = ROOT / "figures" / "tables"
    if not all(finished(r, s) is not None for r in runs for s in r.keys):
        result = run([tool("sre2l"), "reproduce", "family_ci", "--run-dir", tmp_path / "runs", "--out", tmp_path / "tables"])
        assert result.returncode == 0, result.stderr[-3000:]
        out = tmp_path / "tables"
    report = json.loads((out / "family_ci" / "results.json").read_text())
    cells = {(c["row"], c["column"]): c for c in report["cells"]}
    assert report["measured"] == len(spec.cells) == 15
    assert cells[("IPC 10, RDED", "SRe2L's recipe, 40x labels")]["label_bytes"] < cells[("IPC 10, RDED", "SRe2L's recipe, full labels")]["label_bytes"]
    assert cells[("IPC 10, RDED", "SRe2L's recipe, full labels")]["distill_seconds"] < cells[("IPC 10, SRe2L", "SRe2L's recipe, full labels")]["distill_seconds"]
    assert cells[("IPC 10, RDED", "RDED's recipe (online teacher)")]["reports_best"] and "best epoch (%)" in (out / "family_ci" / "family_ci.md").read_text()
    assert (out / "family_ci" / "gains.png").stat().st_size > 1000


def test_a_method_that_names_a_stage_the_pipeline_does_not_have_is_refused():
    from sre2l.methods import Method
    bad = Method("distill-only", "changes a stage that is not one", "a test", {"distill": ("recover.ipc=1",)})
    with pytest.raises(ConfigError, match="changes \\['distill'\\], which are not stages"): bad.settings()


@pytest.mark.parametrize("factor, size", [(2, 8), (2, 28), (4, 32), (3, 7), (2, 9)])
def test_shuffle_patches_is_rdeds_rule_image_by_image(factor, size):
    """RDED's ShufflePatches re-derived from its description (validation/main.py): per image, the `factor` column
    strips in a random order, then the row strips of the result; the kit's batched version moves exactly those."""
    from sre2l.core import generator
    from sre2l.validate import shuffle_patches
    x = torch.randint(0, 255, (6, 3, size, size), dtype=torch.uint8)
    gen = generator(0, "shuffle-test")
    cols, rows = (torch.argsort(torch.rand(6, factor, generator=gen), 1) for _ in range(2))
    expected = []
    for image, col, row in zip(x, cols, rows):
        strips = list(image.tensor_split(factor, dim=2))
        image = torch.cat([strips[j] for j in col.tolist()], 2)
        strips = list(image.tensor_split(factor, dim=1))
        expected.append(torch.cat([strips[j] for j in row.tolist()], 1))
    assert torch.equal(shuffle_patches(x, factor, generator(0, "shuffle-test")), torch.stack(expected))


def test_online_batches_shuffle_the_patches_and_keep_the_labels():
    from sre2l.presets import make_config
    from sre2l.data import get_dataset
    from sre2l.validate import online_batches
    spec = get_dataset("digits")
    images, labels = torch.randint(0, 255, (20, 1, 8, 8), dtype=torch.uint8), torch.arange(20) % 10
    plain = make_config("digits", ["validate.labels=hard", "validate.loss=ce", "relabel.batch_size=5"])
    shuffled = make_config("digits", ["validate.labels=hard", "validate.loss=ce", "relabel.batch_size=5", "validate.shuffle_patches=2"])
    a = list(online_batches(images, labels, plain, spec, torch.device("cpu"))(0))
    b = list(online_batches(images, labels, shuffled, spec, torch.device("cpu"))(0))
    assert [torch.equal(y1, y2) for (_, _, y1), (_, _, y2) in zip(a, b)] == [True] * 4
    assert any(not torch.equal(x1, x2) for (x1, _, _), (x2, _, _) in zip(a, b))
    again = list(online_batches(images, labels, shuffled, spec, torch.device("cpu"))(0))
    assert all(torch.equal(x1, x2) for (x1, _, _), (x2, _, _) in zip(b, again))
