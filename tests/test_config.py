"""Config validation: unknown keys, wrong types, ranges, overrides, YAML errors."""

from __future__ import annotations

import pytest

from polarprune.config import TrainConfig, apply_overrides, deep_merge, parse_override
from polarprune.workflows.train import load_train_config
from polarprune.errors import PolarpruneError


def write(tmp_path, text: str):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_defaults_and_yaml_values(tmp_path):
    cfg = load_train_config(write(tmp_path, "model: {name: resnet20}\ntrain: {epochs: 3, lr: 0.05}\n"))
    assert isinstance(cfg, TrainConfig)
    assert cfg.model.name == "resnet20"
    assert cfg.train.epochs == 3 and cfg.train.lr == 0.05
    assert cfg.train.momentum == 0.9  # default kept


def test_overrides_parse_yaml_types(tmp_path):
    cfg = load_train_config(
        write(tmp_path, "train: {epochs: 3}\n"),
        ["train.epochs=7", "train.schedule.milestones=[2,4]", "train.schedule.gammas=[0.2,0.5]",
         "sparsity.regularizer=polarization", "sparsity.lbd=5e-5", "train.nesterov=true"],
    )
    assert cfg.train.epochs == 7
    assert cfg.train.schedule.milestones == [2, 4]
    assert cfg.train.schedule.gammas == [0.2, 0.5]
    assert cfg.sparsity.regularizer == "polarization"
    assert cfg.sparsity.lbd == pytest.approx(5e-5)
    assert cfg.train.nesterov is True


@pytest.mark.parametrize(
    "text, overrides, fragment",
    [
        ("trian: {epochs: 3}\n", [], "unknown key 'trian'"),
        ("train: {epoch: 3}\n", [], "unknown key 'train.epoch'"),
        ("train: {epochs: three}\n", [], "train.epochs"),
        ("", ["train.lr=-1"], "train.lr"),
        ("", ["sparsity.regularizer=l2"], "sparsity.regularizer"),
        ("", ["train.schedule.milestones=[5,2]"], "increasing"),
        ("", ["train.schedule.milestones=[1,2]", "train.schedule.gammas=[0.1]"], "schedule.gammas"),
        ("", ["sparsity.regularizer=mask-l1"], "sparsity.mask"),
        ("", ["data.batch_size=0"], "data.batch_size"),
        ("", ["sparsity.target_check_every=10"], "target_check_every needs target_macs_ratio"),
        ("", ["sparsity.regularizer=polarization", "sparsity.lbd=-1"], "sparsity.lbd: Input should be greater than or equal to 0"),
        ("sparsity: {regularizer: l1, t: 1.2}\n", [], "unknown key 'sparsity.t'"),  # polarization's key
        ("", ["sparsity.lbdd=1"], "unknown key 'sparsity.lbdd'"),
    ],
)
def test_bad_configs_give_one_line_naming_the_key(tmp_path, text, overrides, fragment):
    with pytest.raises(PolarpruneError) as info:
        load_train_config(write(tmp_path, text), overrides)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(PolarpruneError, match="config file not found"):
        load_train_config(tmp_path / "nope.yaml")
    with pytest.raises(PolarpruneError, match="not valid YAML"):
        load_train_config(write(tmp_path, "train: {epochs: [1\n"))
    with pytest.raises(PolarpruneError, match="mapping"):
        load_train_config(write(tmp_path, "- 1\n- 2\n"))


def test_override_syntax_errors():
    with pytest.raises(PolarpruneError, match="key=value"):
        parse_override("train.lr")
    with pytest.raises(PolarpruneError, match="not a section"):
        apply_overrides({"train": 3}, ["train.lr=1"])


def test_deep_merge_does_not_mutate():
    base = {"a": {"b": 1, "c": 2}}
    merged = deep_merge(base, {"a": {"c": 3}, "d": 4})
    assert merged == {"a": {"b": 1, "c": 3}, "d": 4}
    assert base == {"a": {"b": 1, "c": 2}}
