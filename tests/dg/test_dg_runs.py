"""DG runs on disk: a finished run is found by its configuration, a checkpoint of another
configuration or an unfinished one is refused (``tiny_dg``: a tiny SD's DG model)."""

import dataclasses

import pytest
import torch

from diffprompt.dg.checkpoint import ConfigMismatchError, load_dg_model, save_checkpoint
from diffprompt.dg.config import config_hash
from diffprompt.dg.runs import dg_model, dg_run_dir

pytestmark = pytest.mark.usefixtures("one_thread")


def test_dg_models_from_results_or_a_checkpoint(tiny_dg, dg_results, tmp_path):
    cfg = dataclasses.replace(tiny_dg.cfg, steps=3)
    with pytest.raises(FileNotFoundError, match="run notebook 02"):
        dg_model(cfg, tmp_path, missing="error")
    path = dg_run_dir(tiny_dg.cfg, dg_results) / "checkpoint.pt"
    with pytest.raises(ConfigMismatchError, match="steps"):
        dg_model(cfg, tmp_path, checkpoint=str(path))
    relabelled = _relabelled_checkpoint(path, cfg, tmp_path)
    with pytest.raises(ValueError, match="stopped at step 2 of 3"):
        load_dg_model(cfg, relabelled)
    loaded = dg_model(tiny_dg.cfg, tmp_path, checkpoint=str(path))
    assert loaded.step == 2 and loaded.hash == tiny_dg.hash
    for k, v in tiny_dg.model.head.state_dict().items():
        assert torch.equal(v, loaded.model.head.state_dict()[k]), k


def _relabelled_checkpoint(path, cfg, tmp_path):
    """The checkpoint of a 2-step run re-labelled with the hash of ``cfg`` (3 steps)."""
    d = torch.load(path, weights_only=True)
    d["config_hash"] = config_hash(cfg)
    return save_checkpoint(tmp_path / "relabelled.pt", d)
