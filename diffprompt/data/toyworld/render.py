"""Appearance: a domain's look turns a layout's parts into pixels.

``render_appearance`` runs three stages:

1. the base look: each part's colour and shade through the domain palette, a sky
   gradient, and in photographs clouds, material textures and a little aerial
   perspective (synthetic looks stay flat, saturated and sharp);
2. the weather pass of the domain's condition, chosen from ``CONDITION_PASSES``: fog
   (Koschmieder attenuation by depth), night (low exposure, street lamps with light
   pools, head/tail lights, lit windows, noise), rain (overcast, wet road with mirrored
   reflections, streaks), snow (white cover on horizontal surfaces with tyre tracks,
   snowy edges, flakes); clear changes nothing;
3. the camera: varied tint/exposure (Mapillary), blur, vignetting and sensor noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageDraw

from diffprompt.data.toyworld.domains import Domain, Look
from diffprompt.data.toyworld.world import (
    BUILDING,
    FENCE,
    M_ASPHALT,
    M_BARK,
    M_BODY,
    M_CLOTH,
    M_CONCRETE,
    M_CURB,
    M_FACADE,
    M_FENCE,
    M_FOLIAGE,
    M_GLASS,
    M_GRASS,
    M_HOOD,
    M_LAMP,
    M_METAL,
    M_PAINT,
    M_PAVING,
    M_RUBBER,
    M_SIGN,
    M_SKIN,
    M_SKY,
    ROAD,
    SIDEWALK,
    TERRAIN,
    VEG,
    WALL,
    Layout,
    Light,
)

_GAIN_OF = {
    M_SKY: 0.05,
    M_ASPHALT: 0.6,
    M_PAINT: 0.3,
    M_PAVING: 0.5,
    M_CURB: 0.3,
    M_GRASS: 0.8,
    M_FACADE: 0.35,
    M_GLASS: 0.25,
    M_CONCRETE: 0.45,
    M_FENCE: 0.4,
    M_FOLIAGE: 0.9,
    M_BARK: 0.6,
    M_METAL: 0.25,
    M_BODY: 0.15,
    M_RUBBER: 0.2,
    M_SKIN: 0.1,
    M_CLOTH: 0.35,
    M_LAMP: 0.0,
    M_SIGN: 0.1,
    M_HOOD: 0.15,
}
#: Texture amplitude of each material (indexed by material) in the photographic look.
TEXTURE_GAIN = np.array([_GAIN_OF[m] for m in range(len(_GAIN_OF))], dtype=np.float32)

_NOISE: dict[int, np.ndarray] = {}


def noise_tiles(seed: int = 1234) -> np.ndarray:
    """Return (3, 256, 512) float32 multi-octave value-noise tiles in [0, 1] (cached):
    fine grain, medium blotches and large clouds."""
    if seed not in _NOISE:
        rng = np.random.default_rng(seed)
        tiles = []
        for cells in ((128, 256), (32, 64), (8, 16)):
            acc = np.zeros((256, 512), np.float32)
            for octave in range(3):
                k = 2**octave
                shape = (cells[0] * k // 2 + 1, cells[1] * k // 2 + 1)
                small = rng.random(shape).astype(np.float32)
                big = cv2.resize(small, (512, 256), interpolation=cv2.INTER_CUBIC)
                acc += big / k
            acc = (acc - acc.min()) / (acc.max() - acc.min())
            tiles.append(acc)
        _NOISE[seed] = np.stack(tiles)
    return _NOISE[seed]


def _crop_tile(rng: np.random.Generator, tile: np.ndarray, h: int, w: int) -> np.ndarray:
    """Return a random (h, w) window of a noise tile (the tile is enlarged if too small)."""
    th, tw = tile.shape
    if h > th or w > tw:
        tile = cv2.resize(tile, (max(w, tw), max(h, th)))
        th, tw = tile.shape
    y, x = rng.integers(0, th - h + 1), rng.integers(0, tw - w + 1)
    return tile[y : y + h, x : x + w]


def _saturate(img: np.ndarray, s: float) -> np.ndarray:
    """Return ``img`` (..., 3) with its saturation scaled by ``s``, clipped to [0, 1]."""
    grey = img.mean(-1, keepdims=True)
    return np.clip(grey + (img - grey) * s, 0, 1)


def _glow(h: int, w: int, lights: list[Light], scale: float = 1.0) -> np.ndarray:
    """Return (H, W, 3) additive light halos of point lights."""
    out = np.zeros((h, w, 3), np.float32)
    for lt in lights:
        r = max(lt.radius * scale, 0.8)
        if lt.u < -3 * r or lt.u > w + 3 * r or lt.v < -3 * r or lt.v > h + 3 * r:
            continue
        # only a window of +-6 radii: beyond it the halo is below 1e-15
        v0, v1 = max(0, int(lt.v - 6 * r)), min(h, int(lt.v + 6 * r) + 2)
        u0, u1 = max(0, int(lt.u - 6 * r)), min(w, int(lt.u + 6 * r) + 2)
        vv, uu = np.mgrid[v0:v1, u0:u1].astype(np.float32)
        d2 = ((uu - lt.u) ** 2 + (vv - lt.v) ** 2) / (r * r)
        color = np.asarray(lt.color, np.float32) * lt.strength
        out[v0:v1, u0:u1] += np.exp(-d2)[..., None] * color
    return out


@dataclass
class Frame:
    """What a weather pass reads besides the picture."""

    layout: Layout
    domain: Domain
    material: np.ndarray  # (H, W) int64 material of each pixel
    sky: np.ndarray  # (H, W) bool
    rows: np.ndarray  # (H, 1) float32 row centres as a fraction of the height
    tiles: np.ndarray  # (3, 256, 512) noise tiles


#: A weather pass: (picture (H, W, 3) float, frame, rng) -> the new picture.
ConditionPass = Callable[[np.ndarray, Frame, np.random.Generator], np.ndarray]


def render_appearance(layout: Layout, domain: Domain, rng: np.random.Generator) -> np.ndarray:
    """Return the (H, W, 3) uint8 picture of a layout in a domain's look and condition."""
    h, w = layout.part.shape
    mats = np.array([p.material for p in layout.parts], np.int64)
    frame = Frame(
        layout=layout,
        domain=domain,
        material=mats[layout.part],
        sky=mats[layout.part] == M_SKY,
        rows=(np.arange(h, dtype=np.float32)[:, None] + 0.5) / h,
        tiles=noise_tiles(),
    )
    img = base_look(frame, rng)
    img = CONDITION_PASSES[domain.condition](img, frame, rng)
    img = camera_effects(img, domain, rng)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


def _sky_colors(look: Look) -> tuple[np.ndarray, np.ndarray]:
    """Return the (top, horizon) RGB colours of the sky of a look."""
    if look.synthetic:
        return np.array([0.25, 0.5, 0.95]), np.array([0.65, 0.85, 1.0])
    return np.array([0.5, 0.62, 0.78]), np.array([0.82, 0.86, 0.9])


def base_look(frame: Frame, rng: np.random.Generator) -> np.ndarray:
    """Return the (H, W, 3) float picture before weather and camera: palette, shading,
    sky gradient, and in photographs clouds, material textures and aerial perspective."""
    layout, look = frame.layout, frame.domain.look
    h, w = layout.part.shape
    parts = layout.parts
    colors = np.array([p.color for p in parts], np.float32)
    shades = np.array([p.shade for p in parts], np.float32)[:, None]
    base = colors * shades
    # domain palette: saturation and per-channel gains
    base = _saturate(base, look.saturation) * np.asarray(look.palette_shift, np.float32)
    img = base[layout.part]  # (H, W, 3)
    # sky: a vertical gradient (+ clouds in photographs)
    top_c, hor_c = _sky_colors(look)
    t = np.clip(frame.rows / max(layout.camera.horizon / h, 0.05), 0, 1)[..., None]
    sky_img = top_c * (1 - t) + hor_c * t
    sky_img = np.broadcast_to(sky_img, (h, w, 3)).astype(np.float32)
    if not look.synthetic:
        clouds = _crop_tile(rng, frame.tiles[2], h, w)[..., None]
        sky_img = sky_img * (1 - 0.35 * clouds) + 0.35 * clouds * 0.95
        # material textures: fine grain and medium blotches, modulated per material
        fine = _crop_tile(rng, frame.tiles[0], h, w) - 0.5
        mid = _crop_tile(rng, frame.tiles[1], h, w) - 0.5
        gain = TEXTURE_GAIN[frame.material] * look.texture
        img = img * (1 + (gain * (1.2 * fine + 0.8 * mid))[..., None])
        # soft light falloff with distance (aerial perspective, a little)
        aerial = np.exp(-layout.depth / 400.0)[..., None]
        img = img * aerial + (1 - aerial) * hor_c
    return np.where(frame.sky[..., None], sky_img, img)


# ---------------------------------------------------------------- weather passes
def clear_pass(img: np.ndarray, frame: Frame, rng: np.random.Generator) -> np.ndarray:
    """Return ``img`` unchanged (daylight, no weather)."""
    return img


def fog_pass(img: np.ndarray, frame: Frame, rng: np.random.Generator) -> np.ndarray:
    """Return ``img`` in fog: Koschmieder attenuation towards an airlight by depth, with
    visibility 50-120 m, and washed-out colours."""
    beta = rng.uniform(0.025, 0.06)  # visibility 3/beta: 50-120 m
    airlight = rng.uniform(0.72, 0.85)
    trans = np.exp(-beta * np.minimum(frame.layout.depth, 1e3))[..., None]
    img = img * trans + airlight * (1 - trans)
    return _saturate(img, 0.7)


def rain_pass(img: np.ndarray, frame: Frame, rng: np.random.Generator) -> np.ndarray:
    """Return ``img`` in the rain: overcast and grey, a wet road that mirrors what stands
    on it, and streaks."""
    layout, sky = frame.layout, frame.sky
    h, w = layout.part.shape
    img = _saturate(img, 0.6) * 0.8
    grey_sky = rng.uniform(0.45, 0.6)
    img = np.where(sky[..., None], grey_sky + 0.05 * (img - img.mean()), img)
    wet = layout.ground & ~sky
    # wet road: darker, mirrored reflections of what stands on it
    idx = np.where(~layout.ground, np.arange(h)[:, None], -1)
    last = np.maximum.accumulate(idx, axis=0)  # last non-ground row above each pixel
    mirror = np.clip(2 * last - np.arange(h)[:, None], 0, h - 1)
    refl = img[mirror, np.arange(w)[None, :]]
    refl = cv2.GaussianBlur(refl, (0, 0), 1.2)
    k = np.where(wet & (last >= 0), rng.uniform(0.25, 0.4), 0.0)[..., None]
    img = np.where(wet[..., None], img * 0.7, img) * (1 - k) + refl * k
    st = _streaks(rng, h, w)[..., None]
    return img * (1 - 0.45 * st) + 0.85 * 0.45 * st


def _streaks(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Return (H, W) float32 rain streaks in [0, 1]: short slanted lines."""
    streak = Image.new("L", (w, h), 0)
    sd = ImageDraw.Draw(streak)
    ang = rng.uniform(-0.3, 0.3)
    for _ in range(int(rng.uniform(60, 140) * w * h / (128 * 256))):
        x0, y0 = rng.uniform(-20, w + 20), rng.uniform(-20, h)
        ln = rng.uniform(6, 16)
        sd.line([(x0, y0), (x0 + ln * ang, y0 + ln)], fill=int(rng.uniform(60, 140)), width=1)
    return np.asarray(streak, np.float32) / 255.0


def snow_pass(img: np.ndarray, frame: Frame, rng: np.random.Generator) -> np.ndarray:
    """Return ``img`` in snow: partial white cover on the ground (tyre tracks show the
    asphalt), roofs, the upper edges of foliage, walls and fences; a pale sky; flakes."""
    layout, sky, tiles = frame.layout, frame.sky, frame.tiles
    h, w = layout.part.shape
    img = _saturate(img, 0.6)
    cover = layout.ground & ~sky
    # two tyre tracks per lane, 0.8 m either side of its centre, show the asphalt
    tracks = np.abs(layout.lane_dist - 0.8) < rng.uniform(0.15, 0.25)
    snow_m = cover & ~tracks
    snow_m |= layout.top_faces
    # the upper edges of foliage, walls and fences carry snow
    cls = layout.label
    upper = np.zeros_like(cover)
    upper[1:] = (cls[1:] != cls[:-1]) & np.isin(cls[1:], (VEG, WALL, FENCE, BUILDING))
    for _ in range(2):
        upper[1:] |= upper[:-1] & np.isin(cls[1:], (VEG,))
    speck = _crop_tile(rng, tiles[0], h, w) > 0.72
    snow_m |= upper | (np.isin(cls, (VEG, TERRAIN)) & speck)
    white = rng.uniform(0.82, 0.95) * (1 + 0.05 * (_crop_tile(rng, tiles[1], h, w) - 0.5))
    # partial cover: slush on the road, more on sidewalks, most on grass and edges
    cover_of = np.full(256, 0.7, np.float32)
    cover_of[ROAD] = rng.uniform(0.15, 0.3)
    cover_of[SIDEWALK] = rng.uniform(0.45, 0.6)
    alpha = (snow_m * cover_of[cls])[..., None]
    img = img * (1 - alpha) + alpha * white[..., None] * np.array([0.97, 0.98, 1.0])
    img = np.where(sky[..., None], rng.uniform(0.78, 0.88), img)
    img = img * 0.85 + 0.1
    fl = _flakes(rng, h, w)[..., None]
    return img * (1 - fl) + fl


def _flakes(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Return (H, W) float32 snow flakes in [0, 1]: small bright dots."""
    flakes = Image.new("L", (w, h), 0)
    fd = ImageDraw.Draw(flakes)
    for _ in range(int(rng.uniform(30, 80) * w * h / (128 * 256))):
        x0, y0, r = rng.uniform(0, w), rng.uniform(0, h), rng.choice([0.5, 0.8, 1.3])
        fd.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=int(rng.uniform(150, 255)))
    return np.asarray(flakes, np.float32) / 255.0


def night_pass(img: np.ndarray, frame: Frame, rng: np.random.Generator) -> np.ndarray:
    """Return ``img`` at night: low ambient light, pools of street lamps, the ego car's
    headlights, a dark sky with a glow at the horizon, lit windows, lamps and their halos,
    and sensor noise. Lamps are sodium orange in a city with ``sodium_lamps``."""
    layout, sky = frame.layout, frame.sky
    cam = layout.camera
    h, w = layout.part.shape
    sodium = frame.domain.city.sodium_lamps
    lamp_c = np.array((1.0, 0.62, 0.25) if sodium else (1.0, 0.9, 0.75), np.float32)
    ambient = rng.uniform(0.22, 0.32)
    night = img * ambient * np.array([0.8, 0.85, 1.1])
    night = night + img * _lamp_pools(layout)[..., None] * lamp_c
    # headlights of the ego car light the road ahead
    ego = np.exp(-np.maximum(layout.depth - 3, 0) / rng.uniform(6, 12)) * layout.ground
    night = night + img * ego[..., None] * 0.35 * np.array([1.0, 0.97, 0.9])
    sky_c = np.array((0.06, 0.05, 0.05) if sodium else (0.03, 0.04, 0.08), np.float32)
    haze = np.clip(1 - np.abs(frame.rows - cam.horizon / h) * 4, 0, 1)[..., None] * 0.08
    night = np.where(sky[..., None], sky_c + haze * lamp_c, night)
    window_c = np.array([0.9, 0.75, 0.4]) * rng.uniform(0.35, 0.7)
    night = np.where(layout.window_lit[..., None], window_c, night)
    lamps = frame.material == M_LAMP
    night = np.where(lamps[..., None], np.clip(img * 1.2, 0, 1), night)
    night += _glow(h, w, layout.lights, 1.0) * 0.5
    # night photographs are noisy
    return night + rng.normal(0, rng.uniform(0.012, 0.022), night.shape).astype(np.float32)


def _lamp_pools(layout: Layout) -> np.ndarray:
    """Return (H, W) float32 light of the street lamps: for each, the disc it lights on
    the ground below it (an ellipse in the image) and a fainter glow up to the lamp."""
    cam = layout.camera
    h, w = layout.part.shape
    vv, uu = np.mgrid[0:h, 0:w].astype(np.float32)
    pool = np.zeros((h, w), np.float32)
    for lt in layout.lights:
        if not lt.pool:
            continue
        zl = cam.f * 1.2 / max(lt.radius, 1e-3)  # the lamp's depth, from its radius
        _, vg = cam.project(0.0, 0.0, zl)
        rx, ry = cam.f * 6.0 / zl, max(cam.f * 6.0 / zl * 0.45, 1.0)
        pool += 0.6 * np.exp(-(((uu - lt.u) / rx) ** 2 + ((vv - vg) / ry) ** 2))
        pool += 0.25 * np.exp(-(((uu - lt.u) / rx) ** 2 + ((vv - (lt.v + vg) / 2) / (ry * 3)) ** 2))
    return pool


#: The weather pass of each condition a domain can have.
CONDITION_PASSES: dict[str, ConditionPass] = {
    "clear": clear_pass,
    "fog": fog_pass,
    "night": night_pass,
    "rain": rain_pass,
    "snow": snow_pass,
}


# ---------------------------------------------------------------- camera
def camera_effects(img: np.ndarray, domain: Domain, rng: np.random.Generator) -> np.ndarray:
    """Return ``img`` through the domain's camera: tint/exposure (varied cameras), blur,
    vignetting, sensor noise (not yet clipped)."""
    look = domain.look
    h, w = img.shape[:2]
    if domain.vary_camera:
        img = img * rng.uniform(0.85, 1.15) * rng.uniform(0.9, 1.1, 3)
    if look.blur > 0:
        img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), look.blur)
    if look.vignette > 0:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        r2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
        img = img * (1 - look.vignette * r2 / 2)[..., None]
    if look.noise > 0:
        sig = look.noise * np.sqrt(np.clip(img, 0, 1) + 0.05)
        img = img + rng.normal(0, 1, img.shape).astype(np.float32) * sig
    return img
