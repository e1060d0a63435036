"""Shared test fixtures: a tiny fake data root with every data set in its official layout."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.io  # noqa: E402
from PIL import Image  # noqa: E402

from diffprompt import labels  # noqa: E402

H, W = 8, 16  # every fake image is (H, W)
ACDC_SEQ = {"fog": "GOPR0475", "night": "GOPR0351", "rain": "GOPR0400", "snow": "GOPR0122"}


def stripes(values, h: int = H, w: int = W) -> np.ndarray:
    """Return an (h, w) array of vertical stripes holding ``values`` left to right."""
    cols = np.array_split(np.arange(w), len(values))
    out = np.zeros((h, w), dtype=np.int64)
    for v, c in zip(values, cols, strict=True):
        out[:, c] = v
    return out


# Raw ids written to each data set's labels and the trainIds they must give.
CS_IDS, CS_TRAIN = (7, 26, 1), (0, 13, 255)  # road, car, ego vehicle
SYN_IDS, SYN_TRAIN = (3, 8, 0), (0, 13, 255)  # road, car, void
MAP_IDS = (
    labels.MAPILLARY_V12_NAMES.index("construction--flat--road"),
    labels.MAPILLARY_V12_NAMES.index("object--vehicle--car"),
    labels.MAPILLARY_V12_NAMES.index("void--unlabeled"),
)
MAP_TRAIN = (0, 13, 255)
TRAINIDS = (0, 13, 255)  # BDD100K, ACDC, Dark Zurich store trainIds directly


def random_images(b: int = 2, h: int = 32, w: int = 64, seed: int = 1):
    """Images (b, 3, h, w) in [0, 1] drawn with ``seed``."""
    import torch

    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def random_context(b: int = 2, n: int = 7, d: int = 24, seed: int = 2):
    """A cross-attention context (b, n, d) drawn with ``seed`` (the tiny SD's text width)."""
    import torch

    return torch.randn(b, n, d, generator=torch.Generator().manual_seed(seed))


def write_rgb(path: Path, seed: int = 0, h: int = H, w: int = W) -> None:
    """Write a random RGB image (PNG or JPEG by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def write_gray(path: Path, values: np.ndarray) -> None:
    """Write an 8-bit single-channel (mode L) PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.ascontiguousarray(values, dtype=np.uint8)
    Image.frombytes("L", (arr.shape[1], arr.shape[0]), arr.tobytes()).save(path)


def write_palette(path: Path, values: np.ndarray, palette: list[int] | None = None) -> None:
    """Write a palette (mode P) PNG whose indices are ``values``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.ascontiguousarray(values, dtype=np.uint8)
    im = Image.frombytes("P", (arr.shape[1], arr.shape[0]), arr.tobytes())
    im.putpalette(palette or labels.CITYSCAPES_ID_PALETTE)
    im.save(path)


def write_synthia_label(path: Path, red: np.ndarray, green: np.ndarray) -> None:
    """Write a 16-bit 3-channel PNG: red = class id, green = instance id (cv2 writes BGR)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = np.zeros((*red.shape, 3), dtype=np.uint16)
    bgr[..., 2], bgr[..., 1] = red, green
    assert cv2.imwrite(str(path), bgr)


def _gta5(g: Path) -> None:
    """GTA5: palette PNGs of Cityscapes ids; split.mat with 1-based image numbers."""
    for i in (1, 2, 3):
        write_rgb(g / "images" / f"{i:05d}.png", seed=i)
        write_palette(g / "labels" / f"{i:05d}.png", stripes(CS_IDS))
    scipy.io.savemat(g / "split.mat", {"trainIds": [[1], [2]], "valIds": [[3]], "testIds": [[3]]})


def _synthia(s: Path) -> None:
    """SYNTHIA: 16-bit labels, red = class id, green = instance id (must be ignored)."""
    for i in (0, 1):
        write_rgb(s / "RGB" / f"{i:07d}.png", seed=10 + i)
        write_synthia_label(
            s / "GT" / "LABELS" / f"{i:07d}.png", stripes(SYN_IDS), stripes((1000, 3, 21))
        )


def _cityscapes(c: Path) -> None:
    """Cityscapes: labelIds; test unlabeled; a captions sidecar."""
    for split in ("train", "val", "test"):
        for k, city in enumerate(("aachen", "bremen")):
            stem = f"{city}_000000_0000{19 + k}"
            write_rgb(c / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", seed=k)
            if split != "test":
                write_gray(
                    c / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", stripes(CS_IDS)
                )
    (c / "captions.json").write_text(
        '{"aachen_000000_000019": {"caption": "a street in aachen", "condition": "overcast"}}'
    )


def _bdd100k(b: Path) -> None:
    """BDD100K: jpg images, trainId masks; test unlabeled."""
    for split in ("train", "val", "test"):
        for stem in ("7d06fefd-f7be05a6", "7d128593-0ccfea4c"):
            write_rgb(b / "images" / "10k" / split / f"{stem}.jpg")
            if split != "test":
                write_gray(b / "labels/sem_seg/masks" / split / f"{stem}.png", stripes(TRAINIDS))


def _mapillary(m: Path) -> None:
    """Mapillary: training / validation / testing, v1.2 palette labels, no config file."""
    for folder in ("training", "validation", "testing"):
        for stem in ("__CRyFzoDOXn6unQ6a3DnQ", "_1Gn_xkw7sa_i9GU4mkxxQ"):
            write_rgb(m / folder / "images" / f"{stem}.jpg")
            if folder != "testing":
                write_palette(m / folder / "v1.2" / "labels" / f"{stem}.png", stripes(MAP_IDS))


def _acdc(a: Path) -> None:
    """ACDC: 4 conditions, train/val labeled, test and train_ref unlabeled."""
    for cond, seq in ACDC_SEQ.items():
        for split in ("train", "val", "test", "train_ref"):
            for n in ("000041", "000042"):
                suffix = "_rgb_ref_anon.png" if split.endswith("_ref") else "_rgb_anon.png"
                write_rgb(a / "rgb_anon" / cond / split / seq / f"{seq}_frame_{n}{suffix}")
                if split in ("train", "val"):
                    lbl = a / "gt" / cond / split / seq / f"{seq}_frame_{n}_gt_labelTrainIds.png"
                    write_gray(lbl, stripes(TRAINIDS))


def _dark_zurich(d: Path) -> None:
    """Dark Zurich: night only; val labeled."""
    for split in ("train", "val", "test"):
        for n in ("000321", "000322"):
            stem = f"GOPR0356_frame_{n}"
            write_rgb(d / "rgb_anon" / split / "night" / "GOPR0356" / f"{stem}_rgb_anon.png")
            if split == "val":
                write_gray(
                    d / "gt" / split / "night" / "GOPR0356" / f"{stem}_gt_labelTrainIds.png",
                    stripes(TRAINIDS),
                )


#: data set folder -> the function that writes its fake copy
BUILDERS = {
    "gta5": _gta5,
    "synthia": _synthia,
    "cityscapes": _cityscapes,
    "bdd100k": _bdd100k,
    "mapillary": _mapillary,
    "acdc": _acdc,
    "dark_zurich": _dark_zurich,
}


def build_fake_root(root: Path, sets=tuple(BUILDERS)) -> Path:
    """Fill ``root`` with the data set folders ``sets`` in their official layouts.

    Each split holds 2-3 tiny (H, W) images; labels hold known id stripes (see above).
    """
    for folder in sets:
        BUILDERS[folder](root / folder)
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture
def clean_data_env(monkeypatch):
    """Keep the user's DIFFPROMPT_DATA / DIFFPROMPT_<NAME>_ROOT out of a test."""
    for key in list(os.environ):
        if key == "DIFFPROMPT_DATA" or (key.startswith("DIFFPROMPT_") and key.endswith("_ROOT")):
            monkeypatch.delenv(key)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "sets(*folders): data set folders the fake_root fixture builds (default all)"
    )


@pytest.fixture(scope="session")
def shared_root(tmp_path_factory) -> Path:
    """A read-only fake data root with all seven data sets, built once per session.

    Tests that change files must use ``fake_root`` instead.
    """
    return build_fake_root(tmp_path_factory.mktemp("shared") / "data")


@pytest.fixture
def fake_root(request, tmp_path: Path, clean_data_env) -> Path:
    """A fresh fake data root in tmp_path, with the folders named by @pytest.mark.sets.

    Only the needed sets are written: file creation and clean-up dominate the test time.
    """
    marker = request.node.get_closest_marker("sets")
    sets = marker.args if marker else tuple(BUILDERS)
    return build_fake_root(tmp_path / "data", sets)


@pytest.fixture(scope="session")
def mini_root(tmp_path_factory) -> Path:
    """A tiny embedded miniature (a few 64x128 images per split), generated once."""
    from diffprompt.data.toyworld import ToyWorldConfig, ensure_miniature

    root = tmp_path_factory.mktemp("mini") / "miniature"
    return ensure_miniature(root, ToyWorldConfig(height=64, width=128, scale=0.03))


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny models on one torch thread: more only add overhead (and are ~100x
    slower when the cores are busy). Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------
# Tiny random-weight Stable-Diffusion-style models

WORDS = ["a", "photo", "of", "street", "road", "car", "sky", "building", "at", "night"]


def tiny_sd_parts(
    tmp_path,
    sd2: bool = False,
    seed: int = 0,
    words=WORDS,
    max_length: int = 16,
    unet_widths=(16, 32, 32),
):
    """Return (vae, unet, text encoder, tokenizer, scheduler) of a tiny SD-style model with
    random weights: VAE 2x down, UNet 3 levels of ``unet_widths`` channels (features at
    strides 8, 4, 2), context width 24."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffprompt.backbones.tokenizer import build_clip_tokenizer

    torch.manual_seed(seed)
    tok = build_clip_tokenizer(words, tmp_path / "tok", model_max_length=max_length)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    )
    unet = UNet2DConditionModel(
        sample_size=16,
        block_out_channels=tuple(unet_widths),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=24,
        attention_head_dim=(2, 4, 4) if sd2 else 2,  # SD2: per-block head counts
        use_linear_projection=sd2,  # SD2: linear projections in the transformers
        norm_num_groups=8,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok),
            hidden_size=24,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=max_length,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    sched = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type="v_prediction" if sd2 else "epsilon",
    )
    return vae, unet, text, tok, sched


def save_pipeline(parts, folder):
    """Write tiny SD parts as a diffusers Stable Diffusion folder."""
    from diffusers import StableDiffusionPipeline

    vae, unet, text, tok, sched = parts
    StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tok,
        unet=unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(folder)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    """A tiny random-weight SD folder whose tokenizer knows every prompt word (for training
    runs on ``mini_root``); context length 32."""
    from diffprompt.backbones.tokenizer import caption_words
    from diffprompt.labels import CLASSES
    from diffprompt.prompts import prompt_corpus

    tmp = tmp_path_factory.mktemp("tiny_sd")
    parts = tiny_sd_parts(tmp, words=caption_words(prompt_corpus(CLASSES)), max_length=32)
    save_pipeline(parts, tmp / "model")
    return tmp / "model"


@pytest.fixture(scope="session")
def dg_results(tmp_path_factory) -> Path:
    """The results folder of :func:`tiny_dg`'s run."""
    return tmp_path_factory.mktemp("dg_results")


@pytest.fixture(scope="session")
def tiny_dg(tiny_sd, mini_root, dg_results):
    """A DG model of the tiny SD (fixed scene prompt, 2 steps on 4 images), trained once per
    session and loaded as TTA loads it (:func:`diffprompt.dg.runs.dg_model`)."""
    import torch

    from diffprompt.dg.config import TrainConfig
    from diffprompt.dg.runs import dg_model, train_dg

    cfg = TrainConfig(
        model=str(tiny_sd),
        data_root=str(mini_root),
        steps=2,
        batch_size=2,
        max_train_images=4,
        targets=(),
        fpn_width=8,
        head_width=8,
        prompt_pool=3,
        progress="log",
        prompt_mode="fixed",
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_dg(cfg, dg_results, log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    return dg_model(cfg, dg_results, missing="error")
