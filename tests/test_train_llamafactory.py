"""LLaMA-Factory export: files parse, reference each other, and chain the three stages."""

from __future__ import annotations

import json
import stat

import pytest
import yaml

from cellreasoner.errors import InputError
from cellreasoner.prompts import INSTRUCTION_DIRECT, INSTRUCTION_REASONING
from cellreasoner.train import build_fusion, build_reasoning, read_records
from cellreasoner.train.llamafactory import DATASET_COLUMNS, export_llamafactory


@pytest.fixture(scope="module")
def stage_data(upstream_prompts_dir):
    """Stage data from the upstream PBMC demo prompts (direct) and the builtin teacher."""
    direct = read_records(upstream_prompts_dir / "pbmc_demo_labeled.json")
    scaffold = build_reasoning(direct, "builtin", max_records=10).records
    fusion = build_fusion(direct, scaffold).records
    return {1: scaffold, 2: direct, 3: fusion}


def _load(folder, name):
    return yaml.safe_load((folder / name).read_text())


def test_lora_export_parses_and_chains(stage_data, tmp_path):
    exp = export_llamafactory(stage_data, tmp_path / "lf", cutoff_len=3072)
    root = exp.folder
    info = json.loads((root / "data" / "dataset_info.json").read_text())
    assert [s.stage for s in exp.stages] == [1, 2, 3]
    prev_model = "Qwen/Qwen2.5-7B-Instruct"
    for s in exp.stages:
        train = _load(root, s.train_yaml)
        assert train["stage"] == "sft" and train["do_train"] is True
        assert train["finetuning_type"] == "lora" and train["lora_target"] == "all"
        assert train["template"] == "qwen" and train["cutoff_len"] == 3072
        assert train["model_name_or_path"] == prev_model
        # the dataset is registered, its file exists and holds the stage's records
        entry = info[train["dataset"]]
        assert entry["formatting"] == "alpaca" and entry["columns"] == DATASET_COLUMNS
        data_file = root / train["dataset_dir"] / entry["file_name"]
        records = json.loads(data_file.read_text())
        assert len(records) == len(stage_data[s.stage]) == s.n_records
        for rec in records:  # every mapped column exists: instruction -> system, input -> user
            assert all(col in rec for col in entry["columns"].values())
        # LoRA: the adapter of stage N is merged, and the merged model starts stage N+1
        merge = _load(root, s.merge_yaml)
        assert merge["adapter_name_or_path"] == train["output_dir"]
        assert merge["model_name_or_path"] == train["model_name_or_path"]
        assert merge["template"] == "qwen"
        prev_model = merge["export_dir"]
    assert exp.final_model == root / "models" / "stage3"
    lrs = [_load(root, s.train_yaml)["learning_rate"] for s in exp.stages]
    assert lrs == [1e-4, 1e-4, 5e-5]  # floats, not strings (YAML 1.1 needs "5.0e-05")
    # stage 1 trains reasoning, stage 2 direct answers, stage 3 both
    instr = {s.stage: {r["instruction"] for r in json.loads((root / s.dataset_file).read_text())}
             for s in exp.stages}
    assert instr == {1: {INSTRUCTION_REASONING}, 2: {INSTRUCTION_DIRECT},
                     3: {INSTRUCTION_DIRECT, INSTRUCTION_REASONING}}
    run = (root / "run.sh").read_text().splitlines()
    assert run[-6:] == exp.commands
    assert exp.commands[0] == "llamafactory-cli train stage1_train.yaml"
    assert exp.commands[1] == "llamafactory-cli export stage1_merge.yaml"
    assert (root / "run.sh").stat().st_mode & stat.S_IXUSR
    manifest = json.loads((root / "cellreasoner_export.json").read_text())
    assert manifest["final_model"] == "models/stage3"


def test_full_finetuning_export_chains_output_dirs(stage_data, tmp_path):
    exp = export_llamafactory({2: stage_data[2], 3: stage_data[3]}, tmp_path / "full",
                              finetuning="full", model="/models/qwen",
                              deepspeed="examples/deepspeed/ds_z3_config.json",
                              learning_rates={3: 2e-6})
    s2, s3 = (_load(exp.folder, s.train_yaml) for s in exp.stages)
    assert s2["model_name_or_path"] == "/models/qwen"
    assert s3["model_name_or_path"] == s2["output_dir"]
    assert s2["finetuning_type"] == "full" and "lora_rank" not in s2
    assert s2["deepspeed"].endswith("ds_z3_config.json")
    assert s2["learning_rate"] == 1e-5 and s3["learning_rate"] == 2e-6
    assert all(s.merge_yaml is None for s in exp.stages)
    assert exp.commands == ["llamafactory-cli train stage2_train.yaml",
                            "llamafactory-cli train stage3_train.yaml"]


def test_existing_dataset_info_is_kept(stage_data, tmp_path):
    folder = tmp_path / "lf"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "dataset_info.json").write_text(json.dumps({"mine": {"file_name": "m"}}))
    export_llamafactory({2: stage_data[2]}, folder)
    info = json.loads((folder / "data" / "dataset_info.json").read_text())
    assert "mine" in info and "cellreasoner_stage2_knowledge_infusion" in info


def test_export_errors(stage_data, tmp_path):
    with pytest.raises(InputError, match="Unknown stage"):
        export_llamafactory({4: stage_data[2]}, tmp_path)
    with pytest.raises(InputError, match="finetuning must be"):
        export_llamafactory({2: stage_data[2]}, tmp_path, finetuning="qlora")
    with pytest.raises(InputError, match="not found"):
        export_llamafactory({2: tmp_path / "missing.json"}, tmp_path)


def test_cli_export_prints_the_commands(stage_data, tmp_path, capsys):
    from cellreasoner.cli import main
    from cellreasoner.train import write_records

    files = {s: write_records(stage_data[s], tmp_path / f"s{s}.json") for s in stage_data}
    out = tmp_path / "lf"
    assert main(["train", "export-llamafactory", "-o", str(out), "--stage1", str(files[1]),
                 "--stage2", str(files[2]), "--stage3", str(files[3]), "--lr", "2=2e-4",
                 "--epochs", "1=5"]) == 0
    printed = capsys.readouterr().out
    assert "llamafactory-cli train stage1_train.yaml" in printed
    assert "llamafactory-cli export stage3_merge.yaml" in printed
    assert yaml.safe_load((out / "stage2_train.yaml").read_text())["learning_rate"] == 2e-4
    assert yaml.safe_load((out / "stage1_train.yaml").read_text())["num_train_epochs"] == 5.0
    assert main(["train", "export-llamafactory", "-o", str(out), "--stage2", str(files[2]),
                 "--lr", "two=1"]) == 2
    assert "STAGE=VALUE" in capsys.readouterr().err


def test_export_runs_no_repository_code_unless_asked_and_can_train_without_bf16(stage_data,
                                                                                tmp_path):
    from cellreasoner.cli import main
    from cellreasoner.train import write_records

    f = write_records(stage_data[2], tmp_path / "s2.json")
    out = tmp_path / "lf"
    assert main(["train", "export-llamafactory", "-o", str(out), "--stage2", str(f)]) == 0
    train = yaml.safe_load((out / "stage2_train.yaml").read_text())
    merge = yaml.safe_load((out / "stage2_merge.yaml").read_text())
    assert train["trust_remote_code"] is False and merge["trust_remote_code"] is False
    assert train["bf16"] is True
    out2 = tmp_path / "lf2"
    assert main(["train", "export-llamafactory", "-o", str(out2), "--stage2", str(f),
                 "--no-bf16", "--trust-remote-code"]) == 0
    train = yaml.safe_load((out2 / "stage2_train.yaml").read_text())
    assert train["bf16"] is False and train["trust_remote_code"] is True
