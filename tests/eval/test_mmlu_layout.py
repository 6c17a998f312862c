"""Which MMLU files `--task mc --mc-data DIR` scores and which it draws shots from, for the layouts
users have: the flat examples folder (`SUBJECT_dev.csv` + `SUBJECT_val.csv`), the hendrycks
release (`dev/ val/ test/`), one split folder, and a single file. Dev files are the few-shot pool
and never scored from a folder (the demo's `--limit 20` scored 74 questions, 14 of them dev), and `--shots 5` on
the flat folder finds them beside the val files (it looked for `examples/eval/dev`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from eval_helpers import tiny_checkpoint

from llmctl.errors import UsageError
from llmctl.eval.runner import EvalConfig, run_eval
from llmctl.eval.tasks.mc import MCConfig, data_files, fewshot_file

FLAT = Path("examples/eval/mmlu")
SUBJECTS = ("high_school_geography", "marketing", "world_religions")


@pytest.fixture(scope="module")
def hendrycks(tmp_path_factory) -> Path:
    """The hendrycks layout, built from the bundled files (test = a copy of val)."""
    root = tmp_path_factory.mktemp("mmlu")
    for split in ("dev", "val", "test"):
        (root / split).mkdir()
        for s in SUBJECTS:
            src = FLAT / f"{s}_{'dev' if split == 'dev' else 'val'}.csv"
            shutil.copy(src, root / split / f"{s}_{split}.csv")
    return root


def names(files) -> list[str]:
    return [f.name for f in files]


def test_flat_folder_scores_val_and_shoots_from_dev():
    cfg = MCConfig(data=str(FLAT), shots=5)
    files = data_files(cfg)
    assert names(files) == [f"{s}_val.csv" for s in SUBJECTS]
    assert [fewshot_file(cfg, f) for f in files] == [FLAT / f"{s}_dev.csv" for s in SUBJECTS]
    single = MCConfig(data=str(FLAT / "marketing_val.csv"), shots=5)
    assert (
        data_files(single) == [FLAT / "marketing_val.csv"]
        and fewshot_file(single, FLAT / "marketing_val.csv") == FLAT / "marketing_dev.csv"
    )


def test_hendrycks_layout(hendrycks):
    cfg = MCConfig(data=str(hendrycks), shots=5)
    files = data_files(cfg)
    assert [f.parent.name for f in files] == ["test"] * 3  # lm-eval's MMLU: test items, dev shots
    assert [fewshot_file(cfg, f) for f in files] == [hendrycks / "dev" / f"{s}_dev.csv" for s in SUBJECTS]
    val = MCConfig(data=str(hendrycks / "val"), shots=1)
    assert names(data_files(val)) == [f"{s}_val.csv" for s in SUBJECTS]
    assert fewshot_file(val, data_files(val)[0]) == hendrycks / "dev" / f"{SUBJECTS[0]}_dev.csv"
    assert names(data_files(MCConfig(data=str(hendrycks), subjects=["marketing"]))) == ["marketing_test.csv"]


def test_flat_folder_with_test_files_scores_test(tmp_path):
    for f in FLAT.iterdir():
        shutil.copy(f, tmp_path / f.name)
    shutil.copy(FLAT / "marketing_val.csv", tmp_path / "marketing_test.csv")
    got = names(data_files(MCConfig(data=str(tmp_path))))
    assert got == ["high_school_geography_val.csv", "marketing_test.csv", "world_religions_val.csv"]


def test_missing_fewshot_pool_is_one_clear_error(tmp_path):
    shutil.copy(FLAT / "marketing_val.csv", tmp_path / "marketing_val.csv")
    cfg = MCConfig(data=str(tmp_path), shots=5)
    with pytest.raises(UsageError, match="no few-shot .dev. file for subject 'marketing'.*mc.fewshot_data"):
        fewshot_file(cfg, data_files(cfg)[0])
    only_dev = tmp_path / "dev_only"
    only_dev.mkdir()
    shutil.copy(FLAT / "marketing_dev.csv", only_dev / "marketing_dev.csv")
    with pytest.raises(UsageError, match="few-shot pool"):
        data_files(MCConfig(data=str(only_dev)))


def test_eval_with_shots_on_the_flat_folder_scores_the_val_questions(tmp_path):
    ck = tiny_checkpoint(tmp_path / "ck", tmp_path, max_seq_len=2048)
    cfg = EvalConfig(tasks=["mc"], progress=False)
    cfg.mc.data, cfg.mc.shots, cfg.mc.limit = str(FLAT), 2, 3
    rows = {r["metric"]: r for r in run_eval(ck, tmp_path / "res", cfg)["stats"]["results"]}
    assert rows["acc"]["n"] == 3 * len(SUBJECTS)  # 3 per val file; with the dev files scored too it was 6 per subject
