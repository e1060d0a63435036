"""The embedded model's card, written from a training record and evidence tables."""

import json
from dataclasses import asdict

import pandas as pd
import pytest

from diffprompt.labels import CLASSES
from diffprompt.toysd.card import (
    CARD_TABLES,
    MIN_ATTENTION_MIOU,
    MIN_PROBE_GAIN,
    THIN,
    model_card,
    write_card,
)
from diffprompt.toysd.pretrain import ToySDConfig


def training_record() -> dict:
    """A training record as :func:`diffprompt.toysd.pretrain.save_model` writes one."""
    log = [
        {"stage": "vae", "step": 1, "loss": 0.5, "seconds": 6.0},
        {"stage": "vae_done", "step": 1, "seconds": 120.0, "scaling_factor": 1.25},
        {"stage": "unet", "step": 1, "loss": 0.4321, "lr": 1e-4, "seconds": 600.0},
    ]
    return {
        "recipe": json.loads(json.dumps(asdict(ToySDConfig()))),
        "training_images": 1845,
        "device": "a test machine",
        "scaling_factor": 1.25,
        "parameters": {"vae": 950_000, "unet": 5_950_000, "text_encoder": 920_000},
        "log": log,
    }


def evidence(attention: float, pretrained: float, random: float) -> dict[str, pd.DataFrame]:
    """Evidence tables with an attention mIoU and the two probes' mIoU."""
    use = pd.DataFrame(
        {
            "caption loss": [0.3, 0.2],
            "empty loss": [0.31, 0.21],
            "relative gap %": [3.2, 4.8],
            "caption wins": [0.6, 0.75],
        },
        index=pd.Index([50, 950], name="timestep"),
    )
    att = pd.DataFrame({"mIoU": [attention, attention / 2]}, index=[1, 200])
    psnr = {c: 20.0 + i for i, c in enumerate(CLASSES)}
    rec = pd.DataFrame({"bundled": {**psnr, "all pixels": 25.0}})
    pr = pd.DataFrame({"mIoU": [pretrained, random]}, index=["pretrained UNet", "random UNet"])
    return {"text_usage": use, "attention": att, "vae": rec, "probe": pr}


def test_card_quotes_the_record_and_the_evidence():
    card = model_card(training_record(), evidence(attention=10.0, pretrained=30.0, random=20.0))
    assert card.startswith("# toy-sd: the embedded Stable-Diffusion-style model\n")
    assert card.endswith("\n") and "Measured by run" not in card
    assert "- 1845 images (128x256)" in card
    assert "latent scaling factor 1.2500" in card and "(on a test machine)" in card
    assert "8000 steps of a cosine schedule laid out for 9000" in card
    assert "last logged batch loss 0.4321; 10.0 min" in card
    assert "t=1: 10.0 mIoU, t=200: 5.0 mIoU" in card
    assert "pretrained UNet 30.0, random UNet 20.0 mIoU" in card
    assert "caption gives the lower loss in 60-75% of (image, noise) pairs" in card


def test_card_quotes_the_text_use_of_its_model_when_measured():
    tables = evidence(attention=10.0, pretrained=30.0, random=20.0)
    assert "prompt reaches the features" not in model_card(training_record(), tables)
    cols = {
        "scene vs scene % t=1": [4.5, 30.0],
        "scene vs scene % t=200": [6.25, 31.0],
        "scene vs empty % t=1": [7.0, 40.0],
        "caption gap % (t<=600)": [0.31, 2.0],
        "probe mIoU": [44.0, 43.0],
    }
    tables["text_use"] = pd.DataFrame(cols, index=["toy-sd", "candidate gpu10"])
    card = model_card(training_record(), tables)
    assert (
        "between scene prompts t=1: 4.5%, t=200: 6.2%; against the empty prompt t=1: 7.0%" in card
    )
    assert "lowers the loss by 0.31% at t <= 600" in card  # this model's row, not the candidate's
    assert "make embedded-candidate CANDIDATE=gpu10" in card and "1 candidate(s)" in card


@pytest.mark.parametrize("attention", [MIN_ATTENTION_MIOU - 1, MIN_ATTENTION_MIOU])
@pytest.mark.parametrize("gain", [MIN_PROBE_GAIN - 1, MIN_PROBE_GAIN])
def test_assessment_weighs_the_evidence_against_what_is_asked(attention, gain):
    card = model_card(training_record(), evidence(attention, 20.0 + gain, 20.0))
    binds = attention >= MIN_ATTENTION_MIOU
    assert ("Class words bind" in card) is binds and ("do NOT bind" in card) is not binds
    beats = gain >= MIN_PROBE_GAIN
    assert ("Its features beat" in card) is beats and ("do not beat" in card) is not beats


def test_vae_factor_is_argued_only_with_a_4x_and_an_8x_vae():
    tables = evidence(10.0, 30.0, 20.0)
    assert "VAE factor" not in model_card(training_record(), tables)
    rec = tables["vae"]
    rec["vae x4"] = rec["bundled"]
    rec["vae x8"] = rec["bundled"] - 1.0
    card = model_card(training_record(), tables)
    assert f"reconstructs {len(THIN)} of {len(THIN)} thin classes better than an 8x one" in card


def test_write_card_reads_the_stored_tables_and_manifest(tmp_path):
    folder, results = tmp_path / "model", tmp_path / "results"
    folder.mkdir()
    (folder / "training.json").write_text(json.dumps(training_record()))
    tables = evidence(10.0, 30.0, 20.0)
    (results / "tables").mkdir(parents=True)
    for key, name in CARD_TABLES.items():
        tables[key].to_csv(results / "tables" / f"{name}.csv")
    path = write_card(folder, results)
    assert path == folder / "README.md"
    assert path.read_text() == model_card(training_record(), tables)
    manifest = {"name": "06_embedded_model", "git": {"sha": "0123456789abcdef"}, "device": {}}
    (results / "manifests").mkdir()
    (results / "manifests" / "06_embedded_model.json").write_text(json.dumps(manifest))
    card = write_card(folder, results).read_text()
    assert card.endswith("Measured by run `06_embedded_model` at git 0123456789 on cpu.\n")
