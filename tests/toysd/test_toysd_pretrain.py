"""Pretraining of the embedded tiny SD model: end to end, determinism, resume, CLI."""

import json
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from test_toysd_recipe import H, W, math_isfinite, tiny

from diffprompt.backbones.diffusion import DiffusionBackbone, FeatureConfig
from diffprompt.toysd import pretrain as toysd_pretrain
from diffprompt.toysd.config import OPTIONS
from diffprompt.toysd.pretrain import SAVE_DTYPE, ToySDConfig, pretrain
from diffprompt.toysd.recipe import PRETRAIN_SPLITS

pytestmark = pytest.mark.usefixtures("one_thread")


def final_weights(work: Path) -> dict[str, torch.Tensor]:
    """Return the fp32 weights a finished run left in its work dir (VAE, UNet, text)."""
    d = torch.load(work / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert d["state"]["stage"] == "done"
    out = {
        f"vae.{k}": v
        for k, v in torch.load(work / "vae.pt", map_location="cpu", weights_only=True).items()
    }
    for name, sd in d["modules"].items():
        out.update({f"{name}.{k}": v for k, v in sd.items()})
    assert any(k.startswith("unet.") for k in out) and any(k.startswith("text_") for k in out)
    return out


def saved_weights(out: Path) -> dict[str, torch.Tensor]:
    """Return every tensor of the diffusers folder's safetensors files."""
    return {
        f"{f.parent.name}.{k}": v
        for f in sorted(out.glob("*/*.safetensors"))
        for k, v in load_file(f).items()
    }


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:5]}"


def without_seconds(log: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "seconds"} for e in log]


def record(out: Path) -> dict:
    return json.loads((out / "training.json").read_text())


class Interrupt(Exception):
    """Stands for the process being killed."""


def interrupt_at(prefix: str, lines: list[str]):
    """Return a progress callback that records lines and raises at the first one starting so."""

    def progress(msg: str) -> None:
        lines.append(msg)
        if msg.startswith(prefix):
            raise Interrupt(msg)

    return progress


def quiet(line: str) -> None:
    """A progress callback that drops every line."""


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mini_root):
    """One uninterrupted tiny pretraining run (seed 0), shared by the tests below."""
    base = tmp_path_factory.mktemp("toy_sd_ref")
    cfg = tiny(mini_root)
    lines: list[str] = []
    out = pretrain(cfg, base / "model", base / "work", device="cpu", progress=lines.append)
    return SimpleNamespace(cfg=cfg, out=out, work=base / "work", lines=lines, base=base)


# ---------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------


def test_pretrain_writes_a_loadable_diffusers_model(reference, monkeypatch):
    cfg, out = reference.cfg, reference.out
    assert out == reference.base / "model" and (out / "model_index.json").is_file()
    assert not out.with_name("model.tmp").exists()  # written atomically
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fc = FeatureConfig(blocks=(0, 1, 2), attention_tokens=2)
    bb = DiffusionBackbone.from_pretrained(out, fc)
    assert bb.vae_factor == cfg.vae_factor == 4
    assert bb.context_dim == cfg.text_width
    assert bb.tokenizer.model_max_length == cfg.max_length
    # features of the channels and strides the backbone declares
    ids = bb.tokenizer(["road", "car"], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        ctx = bb.text_encoder(ids).last_hidden_state[:, 1]  # (2, D): one token per class
    images = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = bb(images, ctx)
    assert set(feats) == set(bb.feature_channels) == set(bb.feature_strides)
    assert {"s0", "s1", "s2", "a1", "a2"} <= set(feats)
    for k, f in feats.items():
        s = bb.feature_strides[k]
        assert f.shape == (1, bb.feature_channels[k], H // s, W // s), k
        assert f.dtype == torch.float32 and torch.isfinite(f).all(), k
    assert bb.feature_strides["s0"] == 16 and bb.feature_strides["s2"] == 4
    assert bb.feature_channels["s2"] == cfg.unet_channels[0]
    # stored in half precision, loaded in single precision
    files = sorted(out.glob("*/*.safetensors"))
    assert {f.parent.name for f in files} == {"vae", "unet", "text_encoder"}
    for f in files:
        with safe_open(f, framework="pt") as st:
            dtypes = {st.get_slice(k).get_dtype() for k in st.keys()}
        assert dtypes == {"F16"}, (f, dtypes)
    assert SAVE_DTYPE == torch.float16
    for m in (bb.vae, bb.unet, bb.text_encoder):
        assert {p.dtype for p in m.parameters()} == {torch.float32}
    # the loaded weights are the trained ones (rounded to fp16)
    trained = final_weights(reference.work)
    for k, v in bb.unet.state_dict().items():
        assert torch.equal(v, trained[f"unet.{k}"].half().float()), k


def test_training_record(reference):
    cfg, out = reference.cfg, reference.out
    vae_cfg = json.loads((out / "vae" / "config.json").read_text())
    rec = toysd_pretrain.load_training_record(out)
    recipe = json.loads(json.dumps(asdict(cfg)))
    # the recipe as recorded: the options at their neutral values are left out
    assert rec["recipe"] == {k: v for k, v in recipe.items() if k not in OPTIONS}
    assert all(recipe[k] == v for k, v in OPTIONS.items())
    assert rec["training_images"] == 2 * len(PRETRAIN_SPLITS)
    # parameter counts of what was saved
    sw = saved_weights(out)
    for name in ("vae", "unet", "text_encoder"):
        n = sum(v.numel() for k, v in sw.items() if k.startswith(name + "."))
        assert rec["parameters"][name] == n > 0, name
    # the measured latent scale, also in the VAE's config
    sf = rec["scaling_factor"]
    assert math_isfinite(sf) and sf > 0 and sf != 1.0
    assert vae_cfg["scaling_factor"] == pytest.approx(sf)
    # the log: every VAE step, the VAE summary, every UNet step, evaluations at eval steps
    log = rec["log"]
    vae = [e for e in log if e["stage"] == "vae"]
    assert [e["step"] for e in vae] == [1, 2, 3]
    assert all({"loss", "l1", "psnr", "kl", "seconds"} <= set(e) for e in vae)
    done = [e for e in log if e["stage"] == "vae_done"]
    assert len(done) == 1 and done[0]["scaling_factor"] == sf
    unet = [e for e in log if e["stage"] == "unet"]
    assert [e["step"] for e in unet] == [1, 2, 3, 4]
    assert [e["stage"] for e in log] == ["vae"] * 3 + ["vae_done"] + ["unet"] * 4
    evals = {"caption_loss", "empty_loss", "gap", "relative_gap"}
    for e in unet:
        assert {"loss", "lr", "seconds"} <= set(e)
        if e["step"] % cfg.eval_every == 0:
            assert evals <= set(e), e
            assert e["gap"] == pytest.approx(e["empty_loss"] - e["caption_loss"])
        else:
            assert not evals & set(e), e
    assert all(math_isfinite(v) for e in log for v in e.values() if isinstance(v, float))
    # the progress lines went to the log callback
    assert any(s.startswith("vae step 3/3") for s in reference.lines)
    assert any(s.startswith("unet step 4/4") and "held-out" in s for s in reference.lines)


# ---------------------------------------------------------------------------------------
# Determinism and resume
# ---------------------------------------------------------------------------------------


def test_same_seed_same_weights(reference, tmp_path):
    out = pretrain(reference.cfg, tmp_path / "model", tmp_path / "work", "cpu", quiet)
    assert_bitwise_equal(final_weights(tmp_path / "work"), final_weights(reference.work))
    assert_bitwise_equal(saved_weights(out), saved_weights(reference.out))
    assert without_seconds(record(out)["log"]) == without_seconds(record(reference.out)["log"])


def test_resume_after_the_vae_stage(reference, tmp_path):
    work = tmp_path / "work"
    lines: list[str] = []
    got = pretrain(reference.cfg, tmp_path / "model", work, "cpu", lines.append, stop_after="vae")
    assert got is None and not (tmp_path / "model").exists()
    assert {"vae.pt", "latents.pt", "checkpoint.pt", "config.json"} <= {
        p.name for p in work.iterdir()
    }
    assert not any(s.startswith("unet step") for s in lines)
    lines.clear()
    out = pretrain(reference.cfg, tmp_path / "model", work, device="cpu", progress=lines.append)
    assert any(s.startswith("resumed: stage unet, step 0") for s in lines)
    assert not any(s.startswith("vae step") for s in lines)  # the VAE is not trained again
    assert_bitwise_equal(final_weights(work), final_weights(reference.work))
    assert_bitwise_equal(saved_weights(out), saved_weights(reference.out))
    assert without_seconds(record(out)["log"]) == without_seconds(record(reference.out)["log"])


@pytest.mark.parametrize("stop", ["vae step 3/", "unet step 3/"])
def test_resume_after_an_interruption(reference, tmp_path, stop):
    """Killed one step after a checkpoint (step 2): a rerun continues from step 2."""
    work = tmp_path / "work"
    lines: list[str] = []
    with pytest.raises(Interrupt):
        pretrain(reference.cfg, tmp_path / "model", work, "cpu", interrupt_at(stop, lines))
    assert not (tmp_path / "model").exists()
    ckpt = torch.load(work / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert (ckpt["state"]["stage"], ckpt["state"]["step"]) == (stop.split()[0], 2)
    if stop.startswith("unet"):
        weights = torch.load(work / "weights.pt", weights_only=True)  # the weights-only copy
        assert weights["step"] == 2
    lines.clear()
    out = pretrain(reference.cfg, tmp_path / "model", work, device="cpu", progress=lines.append)
    assert any(s.startswith(f"resumed: stage {stop.split()[0]}, step 2") for s in lines)
    assert not any(s.startswith(stop.replace("3/", "1/")) for s in lines)
    assert_bitwise_equal(final_weights(work), final_weights(reference.work))
    assert_bitwise_equal(saved_weights(out), saved_weights(reference.out))
    assert without_seconds(record(out)["log"]) == without_seconds(record(reference.out)["log"])


def test_a_finished_run_is_not_trained_again(reference, tmp_path):
    lines: list[str] = []
    out = pretrain(reference.cfg, tmp_path / "again", reference.work, "cpu", lines.append)
    assert any(s.startswith("resumed: stage done") for s in lines)
    assert not any(s.startswith(("vae step", "unet step")) for s in lines)
    assert_bitwise_equal(saved_weights(out), saved_weights(reference.out))


def test_work_dir_of_another_configuration_is_refused(reference, tmp_path):
    before = (reference.work / "config.json").read_text()
    for change in ({"seed": 1}, {"unet_steps": 8}, {"vae_channels": (16, 16, 32)}):
        cfg = ToySDConfig(**{**asdict(reference.cfg), **change})
        with pytest.raises(ValueError, match="another configuration"):
            pretrain(cfg, tmp_path / "model", reference.work, device="cpu", progress=quiet)
    assert (reference.work / "config.json").read_text() == before
    assert not (tmp_path / "model").exists()


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


@pytest.fixture
def fake_pretrain(monkeypatch):
    calls: list[dict] = []

    def fake(cfg, out, work, device="auto", progress=print, stop_after=None):
        calls.append(dict(cfg=cfg, out=out, work=work, device=device, stop_after=stop_after))
        return None if stop_after else Path(out)

    monkeypatch.setattr(toysd_pretrain, "pretrain", fake)
    return calls


def test_cli_parses_overrides(fake_pretrain, tmp_path, capsys):
    overrides = [
        "vae_steps=7",
        "kl_weight=1e-5",
        "unet_lr=0.001",
        "train_text_encoder=false",
        "vae_channels=16,16,16",
        "attention_heads=1,2,2",
        "only_cross_attention=false,true,false",
        "data_root=/some/where",
        "precision=fp32",
    ]
    where = ["--out", str(tmp_path / "m"), "--work", str(tmp_path / "w"), "--device", "cpu"]
    toysd_pretrain.main([*where, "--set", *overrides])
    (call,) = fake_pretrain
    cfg = call["cfg"]
    assert (call["out"], call["work"], call["device"]) == (
        str(tmp_path / "m"),
        str(tmp_path / "w"),
        "cpu",
    )
    assert call["stop_after"] is None
    assert cfg.vae_steps == 7 and isinstance(cfg.vae_steps, int)
    assert cfg.kl_weight == 1e-5 and cfg.unet_lr == 0.001 and isinstance(cfg.unet_lr, float)
    assert cfg.train_text_encoder is False
    assert cfg.vae_channels == (16, 16, 16) and cfg.attention_heads == (1, 2, 2)
    assert cfg.only_cross_attention == (False, True, False)
    assert cfg.data_root == "/some/where" and cfg.precision == "fp32"
    changed = {k: getattr(cfg, k) for k in (o.split("=")[0] for o in overrides)}
    assert asdict(cfg) == {**asdict(ToySDConfig()), **changed}
    assert "wrote" in capsys.readouterr().out
    toysd_pretrain.main(["--set", "train_text_encoder=1", "--stop-after", "vae"])
    assert fake_pretrain[-1]["cfg"].train_text_encoder is True
    assert fake_pretrain[-1]["stop_after"] == "vae"


@pytest.mark.parametrize(
    "bad", ["no_such_field=1", "vae_factor=8", "vae_steps=many", "train_text_encoder=maybe", "seed"]
)
def test_cli_rejects_bad_overrides(fake_pretrain, bad):
    with pytest.raises(SystemExit):
        toysd_pretrain.main(["--set", bad])
    assert not fake_pretrain
