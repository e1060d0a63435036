"""The embedded miniature: procedurally generated street scenes written as miniature copies
of GTA5, SYNTHIA, Cityscapes, BDD100K, Mapillary, ACDC and Dark Zurich, in their real
on-disk layouts and label formats, so that the same loaders read them.

How a picture is made (all numpy/PIL/cv2, deterministic by seed):

1. ``sample_scene``: a street in world coordinates (metres; X right, Y up, Z forward): a
   road with lanes, curbs, sidewalks, optional grass strips, facades on both sides built
   from segments (buildings of varied heights, walls, fences, hedges, gaps), and objects
   standing on the ground (cars, trucks, buses, trams, people, cyclists, motorcyclists,
   parked bicycles, poles with traffic lights and signs, trees). Objects are placed at
   depths from 3 m to 70 m, so each class appears at several scales.
2. ``render_layout``: a pinhole camera projects the scene. The ground and the facades are
   rendered analytically per pixel with a depth test; objects are drawn far to near as
   projected polygons. The result is a part-id map: every part carries its class, a base
   colour, a material and a depth, so the label map, the depth map and the picture all
   come from the same geometry.
3. ``render_appearance``: a domain style turns parts into pixels:
   * synthetic rendering (GTA5, SYNTHIA): flat shading, saturated palette, sharp edges;
     SYNTHIA's camera is mounted high and looks down;
   * photographic (Cityscapes, BDD100K, Mapillary, ACDC, Dark Zurich): muted palette,
     material textures, sun shading, blur, sensor noise, vignetting, per-camera tint and
     field of view; BDD100K and Mapillary are JPEG and Mapillary varies its camera most;
   * adverse conditions on the photographic look: fog (Koschmieder attenuation by depth),
     night (low exposure, street lamps with light pools, head/tail lights, lit windows,
     noise), rain (streaks, wet road with mirrored reflections, overcast), snow (white
     cover on horizontal surfaces with tyre tracks, flakes). Dark Zurich is a second city
     (another facade palette, narrower streets, more trams and trees) at night under
     sodium lamps.
4. Every picture gets a caption naming its rendering style, condition and the objects it
   shows, e.g. "a rendered street scene in daylight with two cars, a person and trees".

``ensure_miniature()`` generates the whole miniature into ``data/miniature`` (git-ignored)
when it is missing or was made by another generator version or other parameters; it
writes into a temporary folder and renames it into place, so an interrupted run leaves
nothing half-written. Command line: ``python -m diffprompt.data.toyworld [--force]``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import multiprocessing as mp
import os
import shutil
import string
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

from diffprompt import labels as L
from diffprompt.paths import miniature_root

#: Bump when the generator's output changes; a stale miniature is regenerated.
GENERATOR_VERSION = 5

# trainIds, by name, for readability below
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEG, TERRAIN, SKY = range(11)
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTO, BIKE = range(11, 19)
VOID = L.IGNORE_INDEX

# ---------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------

#: Images per (data set, split) at the default size. Labeled unless noted in the layouts.
DEFAULT_COUNTS: dict[str, dict[str, int]] = {
    "gta5": {"all": 250},
    "synthia": {"all": 250},
    "cityscapes": {"train": 200, "val": 100},
    "bdd100k": {"train": 150, "val": 100},
    "mapillary": {"train": 150, "val": 100},
    "acdc_fog": {"train": 200, "val": 60, "test": 40},
    "acdc_night": {"train": 200, "val": 60, "test": 40},
    "acdc_rain": {"train": 200, "val": 60, "test": 40},
    "acdc_snow": {"train": 200, "val": 60, "test": 40},
    "darkzurich": {"train": 120, "val": 200, "test": 30},
}


@dataclass
class ToyWorldConfig:
    """Parameters of the miniature. Changing any of them regenerates it."""

    height: int = 128  # image height in pixels
    width: int = 256  # image width in pixels
    seed: int = 0  # master seed; image i of (set, split) uses seed (seed, set, split, i)
    scale: float = 1.0  # multiplies every count in DEFAULT_COUNTS (at least 2 per split)
    counts: dict[str, dict[str, int]] = field(default_factory=lambda: DEFAULT_COUNTS)

    def split_counts(self) -> dict[str, dict[str, int]]:
        """Return the number of images of every (set, split), after ``scale``."""
        return {
            d: {s: max(2, round(n * self.scale)) for s, n in splits.items()}
            for d, splits in self.counts.items()
        }

    def stamp(self) -> dict:
        """Return what identifies a generated miniature: generator version + parameters."""
        return {"generator_version": GENERATOR_VERSION, **asdict(self)}


# ---------------------------------------------------------------------------------------
# Domain styles
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CameraModel:
    """Distribution of the camera of one data set (ranges are sampled uniformly)."""

    fov: tuple[float, float] = (75.0, 85.0)  # horizontal field of view, degrees
    horizon: tuple[float, float] = (0.42, 0.48)  # horizon row as a fraction of the height
    height: tuple[float, float] = (1.3, 1.7)  # camera height above the road, metres
    roll: tuple[float, float] = (0.0, 0.0)  # degrees
    hood: tuple[float, float] = (0.0, 0.0)  # ego-vehicle hood height, fraction of the image
    hood_prob: float = 0.0


@dataclass(frozen=True)
class CityModel:
    """Street geometry and palette of one city (a 'world' the cameras drive through)."""

    road_half_width: tuple[float, float] = (4.0, 7.5)
    sidewalk: tuple[float, float] = (2.0, 4.0)
    building_height: tuple[float, float] = (7.0, 24.0)
    building_length: tuple[float, float] = (8.0, 25.0)
    tree_prob: float = 0.5
    tram_prob: float = 0.25
    facade_colors: tuple[tuple[int, int, int], ...] = (
        (150, 140, 130), (170, 160, 145), (120, 110, 105), (160, 120, 100),
        (140, 140, 145), (185, 175, 160), (110, 100, 95),
    )  # fmt: skip


@dataclass(frozen=True)
class Look:
    """How parts become pixels: palette, textures and the optics/sensor of a domain."""

    synthetic: bool  # flat shading, sharp edges, no texture/noise
    saturation: float  # 1 = palette as is
    palette_shift: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-channel gains
    texture: float = 0.0  # amplitude of material textures
    blur: float = 0.0  # gaussian sigma, pixels
    noise: float = 0.0  # sensor noise std (0..1 scale)
    vignette: float = 0.0  # darkening at the corners
    jpeg: int = 0  # JPEG quality for .jpg data sets (0 = PNG)
    vehicle_palette: str = "muted"  # "bright" for the games


CITY_A = CityModel()
CITY_GAME = CityModel(
    facade_colors=(
        (215, 140, 70),
        (70, 160, 170),
        (210, 110, 130),
        (230, 200, 120),
        (120, 170, 90),
        (180, 90, 60),
        (200, 200, 210),
    ),  # fmt: skip
)
CITY_SYNTHIA = CityModel(
    road_half_width=(5.0, 9.0),
    facade_colors=(
        (205, 190, 175),
        (190, 175, 170),
        (215, 205, 190),
        (175, 165, 160),
        (200, 180, 185),
    ),  # fmt: skip
)
CITY_ZURICH_NIGHT = CityModel(  # Dark Zurich: an older city, narrower streets, trams, trees
    road_half_width=(3.5, 5.5),
    sidewalk=(1.5, 3.0),
    building_height=(9.0, 18.0),
    building_length=(6.0, 14.0),
    tree_prob=0.7,
    tram_prob=0.35,
    facade_colors=(
        (200, 185, 150),
        (175, 150, 120),
        (210, 200, 175),
        (150, 135, 115),
        (190, 170, 140),
    ),  # fmt: skip
)

LOOK_GAME = Look(synthetic=True, saturation=1.5, vehicle_palette="bright")
LOOK_SYNTHIA = Look(synthetic=True, saturation=1.15, palette_shift=(1.05, 0.98, 0.98))
LOOK_PHOTO = Look(
    synthetic=False, saturation=0.7, palette_shift=(0.97, 1.0, 0.98), texture=0.35,
    blur=0.7, noise=0.02, vignette=0.25,
)  # fmt: skip
LOOK_DASHCAM = Look(
    synthetic=False, saturation=0.6, palette_shift=(0.92, 1.0, 1.08), texture=0.35,
    blur=0.9, noise=0.03, vignette=0.45, jpeg=70,
)  # fmt: skip
LOOK_STREETLEVEL = Look(
    synthetic=False, saturation=0.8, texture=0.35, blur=0.6, noise=0.025, vignette=0.2,
    jpeg=80,
)  # fmt: skip


@dataclass(frozen=True)
class Domain:
    """One miniature data set: its city, camera, look, condition and caption words."""

    name: str
    city: CityModel
    camera: CameraModel
    look: Look
    condition: str  # clear | fog | night | rain | snow
    style_words: str  # caption prefix naming the rendering style
    vary_camera: bool = False  # Mapillary: many devices, random tint/exposure


CAM_CITYSCAPES = CameraModel(fov=(70, 80), hood=(0.07, 0.1), hood_prob=1.0)
CAM_ACDC = CameraModel(fov=(80, 90), horizon=(0.4, 0.47), hood=(0.05, 0.08), hood_prob=0.5)

DOMAINS: dict[str, Domain] = {
    "gta5": Domain("gta5", CITY_GAME, CameraModel(fov=(70, 90)), LOOK_GAME, "clear",
                   "a rendered street scene"),
    "synthia": Domain("synthia", CITY_SYNTHIA,
                      CameraModel(fov=(80, 95), horizon=(0.06, 0.2), height=(3.5, 6.0)),
                      LOOK_SYNTHIA, "clear", "a rendered street scene seen from above"),
    "cityscapes": Domain("cityscapes", CITY_A, CAM_CITYSCAPES, LOOK_PHOTO, "clear",
                         "a photo of a street scene"),
    "bdd100k": Domain("bdd100k", CITY_A,
                      CameraModel(fov=(90, 105), horizon=(0.4, 0.55), height=(1.2, 1.5),
                                  hood=(0.08, 0.14), hood_prob=0.7),
                      LOOK_DASHCAM, "clear", "a dashcam photo of a street scene"),
    "mapillary": Domain("mapillary", CITY_A,
                        CameraModel(fov=(60, 100), horizon=(0.33, 0.6), height=(1.2, 2.5),
                                    roll=(-6, 6)),
                        LOOK_STREETLEVEL, "clear", "a street-level photo", vary_camera=True),
    "acdc_fog": Domain("acdc_fog", CITY_A, CAM_ACDC, LOOK_PHOTO, "fog",
                       "a photo of a street scene"),
    "acdc_night": Domain("acdc_night", CITY_A, CAM_ACDC, LOOK_PHOTO, "night",
                         "a photo of a street scene"),
    "acdc_rain": Domain("acdc_rain", CITY_A, CAM_ACDC, LOOK_PHOTO, "rain",
                        "a photo of a street scene"),
    "acdc_snow": Domain("acdc_snow", CITY_A, CAM_ACDC, LOOK_PHOTO, "snow",
                        "a photo of a street scene"),
    "darkzurich": Domain("darkzurich", CITY_ZURICH_NIGHT,
                         CameraModel(fov=(75, 85), horizon=(0.42, 0.5), height=(1.3, 1.6)),
                         LOOK_PHOTO, "night", "a photo of a street scene"),
}  # fmt: skip

CONDITION_WORDS = {
    "clear": "in daylight",
    "fog": "in fog",
    "night": "at night",
    "rain": "in the rain",
    "snow": "in snow",
}

# ---------------------------------------------------------------------------------------
# Scene model
# ---------------------------------------------------------------------------------------

# materials (appearance only; the class comes from the part)
M_SKY, M_ASPHALT, M_PAINT, M_PAVING, M_CURB, M_GRASS, M_FACADE, M_GLASS = range(8)
M_CONCRETE, M_FENCE, M_FOLIAGE, M_BARK, M_METAL, M_BODY, M_RUBBER, M_SKIN = range(8, 16)
M_CLOTH, M_LAMP, M_SIGN, M_HOOD = range(16, 20)

#: texture amplitude of each material in the photographic look
TEXTURE_GAIN = np.array(
    [0.05, 0.6, 0.3, 0.5, 0.3, 0.8, 0.35, 0.25, 0.45, 0.4, 0.9, 0.6, 0.25, 0.15, 0.2,
     0.1, 0.35, 0.0, 0.1, 0.15], dtype=np.float32,
)  # fmt: skip


@dataclass
class Camera:
    """A pinhole camera: focal length f (px), principal point (cx, horizon row), height."""

    width: int
    height: int
    f: float
    cx: float
    horizon: float  # row of the vanishing point
    cam_h: float  # metres above the road
    roll: float = 0.0
    hood: float = 0.0  # rows covered by the ego vehicle's hood, fraction of the height

    def project(self, x: float, y: float, z: float) -> tuple[float, float]:
        """Return the pixel (u, v) of world point (x, y, z)."""
        return self.cx + self.f * x / z, self.horizon + self.f * (self.cam_h - y) / z


@dataclass
class Part:
    cls: int  # trainId (255 = void)
    material: int
    color: tuple[float, float, float]  # base RGB in [0, 1]
    depth: float  # metres
    shade: float = 1.0  # face orientation (1 = facing the camera)
    kind: str = ""  # object kind for captions ("car", "person", ...)
    instance: int = 0  # object instance (for captions and SYNTHIA's instance channel)


@dataclass
class Light:
    u: float
    v: float
    radius: float  # pixels
    color: tuple[float, float, float]
    strength: float
    pool: bool = False  # also lights the ground around (street lamps)


@dataclass
class Layout:
    """Geometry rendered to pixels: part ids, depth, and what night rendering needs."""

    camera: Camera
    part: np.ndarray  # (H, W) int32 index into parts
    depth: np.ndarray  # (H, W) float32 metres (sky = 1e4)
    parts: list[Part]
    lights: list[Light]
    window_lit: np.ndarray  # (H, W) bool: building windows that are lit at night
    ground: np.ndarray  # (H, W) bool: horizontal surfaces (road, sidewalk, terrain)
    lane_dist: np.ndarray  # (H, W) float32 |X - nearest lane centre| on the road, else inf
    top_faces: np.ndarray  # (H, W) bool: upward-facing faces of objects (roofs)

    @property
    def label(self) -> np.ndarray:
        """(H, W) uint8 trainIds."""
        cls = np.array([p.cls for p in self.parts], dtype=np.uint8)
        return cls[self.part]


def _u(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(lo_hi[0], lo_hi[1]))


def sample_camera(rng: np.random.Generator, model: CameraModel, h: int, w: int) -> Camera:
    """Draw a camera from a data set's camera model."""
    fov = math.radians(_u(rng, model.fov))
    f = (w / 2) / math.tan(fov / 2)
    hood = _u(rng, model.hood) if rng.random() < model.hood_prob else 0.0
    return Camera(
        width=w,
        height=h,
        f=f,
        cx=w / 2 + rng.uniform(-0.04, 0.04) * w,
        horizon=_u(rng, model.horizon) * h,
        cam_h=_u(rng, model.height),
        roll=_u(rng, model.roll),
        hood=hood,
    )


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: float = 0.08):
    c = np.asarray(rgb, dtype=np.float32) / 255.0
    c = c * (1 + rng.uniform(-amount, amount)) + rng.uniform(-amount / 2, amount / 2, 3)
    return tuple(float(x) for x in np.clip(c, 0, 1))


VEHICLE_COLORS = {
    "muted": ((30, 30, 35), (200, 200, 205), (150, 150, 155), (40, 50, 90), (120, 30, 30),
              (90, 90, 95), (230, 230, 230), (60, 70, 60)),
    "bright": ((220, 30, 30), (250, 200, 30), (30, 90, 220), (40, 180, 60), (245, 245, 245),
               (240, 110, 20), (150, 40, 180), (20, 20, 20)),
}  # fmt: skip
CLOTH_COLORS = ((30, 30, 40), (60, 60, 70), (120, 30, 40), (40, 60, 110), (160, 150, 140),
                (90, 70, 50), (200, 60, 40), (40, 110, 60))  # fmt: skip
SKIN_COLORS = ((240, 200, 170), (200, 150, 110), (140, 95, 65), (90, 60, 40))


class SceneBuilder:
    """Samples one street and renders its layout (part ids, depth, lights)."""

    def __init__(self, rng: np.random.Generator, domain: Domain, cam: Camera):
        self.rng, self.domain, self.cam = rng, domain, cam
        self.city = domain.city
        self.parts: list[Part] = [Part(VOID, M_SKY, (0, 0, 0), 1e4)]  # id 0: unused
        self.lights: list[Light] = []
        self.n_instances = 0
        self.vehicle_palette = VEHICLE_COLORS[domain.look.vehicle_palette]

    # -- parts -----------------------------------------------------------------------
    def add_part(self, cls, material, color, depth, shade=1.0, kind="", instance=0) -> int:
        self.parts.append(Part(cls, material, color, depth, shade, kind, instance))
        return len(self.parts) - 1

    def new_instance(self) -> int:
        self.n_instances += 1
        return self.n_instances

    # -- the whole scene -------------------------------------------------------------
    def build(self) -> Layout:
        rng, cam, city = self.rng, self.cam, self.city
        h, w = cam.height, cam.width
        self.road_hw = _u(rng, city.road_half_width)
        self.road_xc = rng.uniform(-0.6, 0.6) * self.road_hw  # camera drives in some lane
        self.sidewalk = [_u(rng, city.sidewalk), _u(rng, city.sidewalk)]
        self.grass = [_u(rng, (1.0, 4.0)) if rng.random() < 0.35 else 0.0 for _ in range(2)]
        self.lanes = max(1, int(self.road_hw * 2 // 3.2))
        part = np.zeros((h, w), np.int32)
        depth = np.full((h, w), 1e4, np.float32)
        self.sky_id = self.add_part(SKY, M_SKY, (0.6, 0.75, 0.9), 1e4)
        part[:] = self.sky_id
        window_lit = np.zeros((h, w), bool)
        ground = np.zeros((h, w), bool)
        lane_dist = np.full((h, w), np.inf, np.float32)
        self._ground(part, depth, ground, lane_dist)
        self._facades(part, depth, window_lit)
        top = self._objects(part, depth)
        if cam.hood > 0:
            self._hood(part, depth)
        return Layout(cam, part, depth, self.parts, self.lights, window_lit, ground, lane_dist,
                      top)  # fmt: skip

    # -- ground: road, lane paint, curbs, sidewalks, grass ---------------------------
    def _ground(self, part, depth, ground, lane_dist) -> None:
        cam, rng = self.cam, self.rng
        h, w = part.shape
        v = np.arange(h, dtype=np.float32)[:, None] + 0.5
        u = np.arange(w, dtype=np.float32)[None, :] + 0.5
        dv = v - cam.horizon
        below = dv > 0.35
        z = np.where(below, cam.f * cam.cam_h / np.maximum(dv, 1e-3), 1e4)
        x = (u - cam.cx) * z / cam.f
        rel = x - self.road_xc
        a = np.abs(rel)
        side = (rel > 0).astype(np.int64)
        sw = np.where(side == 1, self.sidewalk[1], self.sidewalk[0])
        gr = np.where(side == 1, self.grass[1], self.grass[0])
        road_c = (0.32, 0.32, 0.34)
        road = self.add_part(ROAD, M_ASPHALT, road_c, 0)
        paint = self.add_part(ROAD, M_PAINT, (0.85, 0.85, 0.82), 0)
        curb = self.add_part(SIDEWALK, M_CURB, (0.62, 0.6, 0.58), 0)
        walk = self.add_part(SIDEWALK, M_PAVING, _jitter(rng, (165, 155, 148)), 0)
        grass = self.add_part(TERRAIN, M_GRASS, _jitter(rng, (105, 135, 60)), 0)
        ids = np.full((h, w), grass, np.int32)
        ids[a < self.road_hw + sw + gr] = grass
        ids[a < self.road_hw + sw] = walk
        ids[a < self.road_hw + 0.3] = curb
        ids[a < self.road_hw] = road
        # lane paint: dashed lines between lanes, solid edge lines
        lane_w = 2 * self.road_hw / self.lanes
        lines = -self.road_hw + lane_w * np.arange(1, self.lanes)
        on_road = a < self.road_hw
        for lx in lines:
            dash = (np.mod(z, 9.0) < 4.0) & (np.abs(rel - lx) < 0.09)
            ids[on_road & dash] = paint
        ids[on_road & (a > self.road_hw - 0.35) & (a < self.road_hw - 0.2)] = paint
        if rng.random() < 0.3:  # a zebra crossing
            zc = rng.uniform(8, 25)
            zebra = on_road & (z > zc) & (z < zc + 3.0) & (np.mod(rel, 1.0) < 0.5)
            ids[zebra] = paint
        centres = -self.road_hw + lane_w * (np.arange(self.lanes) + 0.5)
        ld = np.min(np.abs(rel[..., None] - centres), axis=-1)
        lane_dist[:] = np.where(on_road & below, ld, np.inf)
        keep = np.broadcast_to(below & (z < 400), (h, w))
        z = np.broadcast_to(z, (h, w))
        part[keep] = ids[keep]
        depth[keep] = z[keep]
        ground[keep] = True
        self.ground_z = z

    # -- facades: buildings, walls, fences, hedges, far end --------------------------
    def _side_segments(self):
        rng, city = self.rng, self.city
        segs = []
        z = rng.uniform(-10, 2)
        while z < 160:
            r = rng.random()
            length = _u(rng, city.building_length)
            if r < 0.62:
                kind, hgt = "building", _u(rng, city.building_height)
            elif r < 0.72:
                kind, hgt, length = "wall", rng.uniform(1.2, 2.8), rng.uniform(5, 15)
            elif r < 0.82:
                kind, hgt, length = "fence", rng.uniform(1.0, 2.2), rng.uniform(5, 15)
            elif r < 0.94:
                kind, hgt, length = "hedge", rng.uniform(3.0, 9.0), rng.uniform(5, 15)
            else:
                kind, hgt, length = "gap", 0.0, rng.uniform(4, 10)
            segs.append((z, z + length, kind, hgt))
            z += length
        return segs

    def _facades(self, part, depth, window_lit) -> None:
        cam, rng = self.cam, self.rng
        h, w = part.shape
        v = np.arange(h, dtype=np.float32)[:, None] + 0.5
        u = np.arange(w, dtype=np.float32) + 0.5
        for s, sign in enumerate((-1.0, 1.0)):
            xs = self.road_xc + sign * (self.road_hw + self.sidewalk[s] + self.grass[s])
            du = u - cam.cx
            valid = (np.sign(du) == np.sign(xs)) & (np.abs(du) > 0.5)
            zc = np.where(valid, cam.f * xs / np.where(valid, du, 1.0), -1.0)  # (W,)
            segs = self._side_segments()
            starts = np.array([sg[0] for sg in segs])
            idx = np.clip(np.searchsorted(starts, zc, side="right") - 1, 0, len(segs) - 1)
            valid &= (zc > 0.8) & (zc < segs[-1][1])
            shade = 0.8 if sign < 0 else 0.65  # sun from the left-front
            for k, (_z0, _z1, kind, hgt) in enumerate(segs):
                cols = valid & (idx == k)
                if not cols.any() or kind == "gap":
                    continue
                zk = zc[cols]
                if kind == "hedge":  # bumpy top
                    hk = hgt * (1 + 0.25 * np.sin(zk * rng.uniform(0.5, 1.5) + rng.uniform(0, 9)))
                else:
                    hk = np.full_like(zk, hgt)
                top = cam.horizon + cam.f * (cam.cam_h - hk) / zk
                bot = cam.horizon + cam.f * cam.cam_h / zk
                m = (v >= top[None]) & (v < bot[None]) & (zk[None] < depth[:, cols])
                if kind == "building":
                    col = _jitter(
                        rng, self.city.facade_colors[rng.integers(len(self.city.facade_colors))]
                    )
                    pid = self.add_part(BUILDING, M_FACADE, col, float(zk.mean()), shade)
                    gid = self.add_part(BUILDING, M_GLASS, _jitter(rng, (60, 70, 80)),
                                        float(zk.mean()), shade)  # fmt: skip
                    # windows on a grid in facade coordinates (Z along, Y up)
                    yw = cam.cam_h - (v - cam.horizon) * zk[None] / cam.f
                    pitch = rng.uniform(2.5, 4.0)
                    floor = rng.uniform(2.8, 3.6)
                    fz = np.mod(zk / pitch, 1.0)[None]
                    fy = np.mod((yw - 1.0) / floor, 1.0)
                    win = (fz > 0.25) & (fz < 0.75) & (fy > 0.3) & (fy < 0.8) & (yw > 2.5)
                    win &= yw < hk[None] - 0.8
                    ids = np.where(win, gid, pid)
                    cell = np.floor(zk / pitch)[None] * 131 + np.floor((yw - 1.0) / floor)
                    lit = win & (np.mod(cell * 0.618 + k * 0.37, 1.0) < 0.2)
                    window_lit[:, cols] |= m & lit
                elif kind == "hedge":
                    ids = self.add_part(VEG, M_FOLIAGE, _jitter(rng, (60, 85, 40)),
                                        float(zk.mean()), shade)  # fmt: skip
                else:
                    # walls and fences stand in front of greenery or sky
                    if rng.random() < 0.6:
                        hb = hgt + rng.uniform(1.0, 5.0)
                        topb = cam.horizon + cam.f * (cam.cam_h - hb) / zk
                        mb = (v >= topb[None]) & (v < top[None]) & (zk[None] < depth[:, cols])
                        vid = self.add_part(VEG, M_FOLIAGE, _jitter(rng, (55, 80, 35)),
                                            float(zk.mean()) + 1, shade)  # fmt: skip
                        sub = part[:, cols]
                        sub[mb] = vid
                        part[:, cols] = sub
                        dsub = depth[:, cols]
                        dsub[mb] = (zk[None] + 1).repeat(h, 0)[mb]
                        depth[:, cols] = dsub
                    if kind == "wall":
                        ids = self.add_part(WALL, M_CONCRETE, _jitter(rng, (150, 145, 135)),
                                            float(zk.mean()), shade)  # fmt: skip
                    else:
                        ids = self.add_part(FENCE, M_FENCE, _jitter(rng, (120, 110, 95)),
                                            float(zk.mean()), shade)  # fmt: skip
                ids = np.broadcast_to(ids, m.shape)
                sub = part[:, cols]
                sub[m] = ids[m]
                part[:, cols] = sub
                dsub = depth[:, cols]
                dsub[m] = np.broadcast_to(zk[None], m.shape)[m]
                depth[:, cols] = dsub
        # the far end of the street: a cross facade, sometimes
        if rng.random() < 0.5:
            zend = rng.uniform(60, 150)
            hgt = _u(rng, self.city.building_height)
            top = cam.horizon + cam.f * (cam.cam_h - hgt) / zend
            bot = cam.horizon + cam.f * cam.cam_h / zend
            col = _jitter(rng, self.city.facade_colors[rng.integers(len(self.city.facade_colors))])
            pid = self.add_part(BUILDING, M_FACADE, col, zend)
            m = (v >= top) & (v < bot) & (np.broadcast_to(zend, part.shape) < depth)
            part[m] = pid
            depth[m] = zend

    # -- objects ----------------------------------------------------------------------
    def _objects(self, part, depth) -> np.ndarray:
        rng, city = self.rng, self.city
        h, w = part.shape
        objs = []  # (z, draw-callable)
        lane_w = 2 * self.road_hw / self.lanes
        # vehicles in lanes and parked at the kerb
        for _ in range(rng.integers(2, 9)):
            lane = rng.integers(self.lanes)
            x = self.road_xc - self.road_hw + lane_w * (lane + 0.5) + rng.uniform(-0.3, 0.3)
            z = rng.uniform(4.5, 60)
            r = rng.random()
            kind = "car" if r < 0.72 else ("truck" if r < 0.86 else "bus")
            objs.append((z, "vehicle", dict(x=x, z=z, kind=kind, oncoming=x < self.road_xc - 0.5
                                            and rng.random() < 0.7)))  # fmt: skip
        for sign in (-1, 1):
            if rng.random() < 0.5:
                for _ in range(rng.integers(1, 4)):
                    x = self.road_xc + sign * (self.road_hw - 1.1)
                    objs.append((rng.uniform(5, 45), "vehicle",
                                 dict(x=x, z=None, kind="car", oncoming=False)))  # fmt: skip
        if rng.random() < city.tram_prob:
            objs.append((rng.uniform(8, 45), "vehicle",
                         dict(x=self.road_xc + rng.uniform(-0.5, 0.5), z=None, kind="train",
                              oncoming=False)))  # fmt: skip
        # people on the sidewalks, some crossing
        for _ in range(rng.integers(1, 8)):
            s = rng.integers(2)
            sign = -1 if s == 0 else 1
            x = self.road_xc + sign * (self.road_hw + rng.uniform(0.4, self.sidewalk[s] - 0.3))
            if rng.random() < 0.15:
                x = self.road_xc + rng.uniform(-self.road_hw, self.road_hw)
            objs.append((rng.uniform(3.5, 40), "person", dict(x=x)))
        # cyclists and motorcyclists near the kerb; parked bicycles
        for _ in range(rng.integers(1, 4)):
            sign = rng.choice([-1, 1])
            x = self.road_xc + sign * (self.road_hw - rng.uniform(0.6, 1.5))
            objs.append((rng.uniform(4, 35), "twowheeler",
                         dict(x=x, motor=rng.random() < 0.4, rider=True)))  # fmt: skip
        for _ in range(rng.integers(0, 3)):
            s = rng.integers(2)
            sign = -1 if s == 0 else 1
            x = self.road_xc + sign * (self.road_hw + rng.uniform(0.5, self.sidewalk[s]))
            objs.append((rng.uniform(4, 25), "twowheeler",
                         dict(x=x, motor=rng.random() < 0.3, rider=False)))  # fmt: skip
        # poles with lamps, traffic lights and signs at the kerb; trees
        for s, sign in enumerate((-1, 1)):
            x = self.road_xc + sign * (self.road_hw + 0.5)
            z = rng.uniform(3, 15)
            while z < 80:
                r = rng.random()
                kind = "lamp" if r < 0.4 else ("light" if r < 0.65 else "sign")
                objs.append((z, "pole", dict(x=x, kind=kind, sign=sign)))
                z += rng.uniform(10, 30)
            if rng.random() < city.tree_prob:
                xt = self.road_xc + sign * (self.road_hw + self.sidewalk[s] * rng.uniform(0.5, 0.9))
                z = rng.uniform(4, 14)
                while z < 70:
                    objs.append((z, "tree", dict(x=xt)))
                    z += rng.uniform(7, 16)
        objs.sort(key=lambda o: -o[0])
        img = Image.new("I", (w, h), 0)
        top_img = Image.new("L", (w, h), 0)
        draw, tdraw = ImageDraw.Draw(img), ImageDraw.Draw(top_img)
        for z, kind, kw in objs:
            if kind == "vehicle":
                if kw["z"] is None:
                    kw["z"] = z
                self._vehicle(draw, tdraw, **kw)
            elif kind == "person":
                self._person(draw, kw["x"], z)
            elif kind == "twowheeler":
                self._twowheeler(draw, kw["x"], z, kw["motor"], kw["rider"])
            elif kind == "pole":
                self._pole(draw, kw["x"], z, kw["kind"], kw["sign"])
            elif kind == "tree":
                self._tree(draw, kw["x"], z)
        obj = np.asarray(img, dtype=np.int32)
        m = obj > 0
        part[m] = obj[m]
        dep = np.array([p.depth for p in self.parts], np.float32)
        depth[m] = dep[obj[m]]
        return (np.asarray(top_img) > 0) & m

    def _poly(self, draw, pts3d, pid) -> None:
        pts = [self.cam.project(*p) for p in pts3d]
        draw.polygon(pts, fill=pid)

    def _rect(self, draw, x0, x1, y0, y1, z, pid) -> None:
        """An upright rectangle facing the camera at depth z."""
        self._poly(draw, [(x0, y0, z), (x1, y0, z), (x1, y1, z), (x0, y1, z)], pid)

    def _vehicle(self, draw, tdraw, x, z, kind, oncoming) -> None:
        rng = self.rng
        wd, ht, ln = {"car": (1.8, 1.45, 4.3), "truck": (2.5, 3.3, 7.5), "bus": (2.55, 3.1, 11.0),
                      "train": (2.6, 3.6, 26.0)}[kind]  # fmt: skip
        wd *= rng.uniform(0.92, 1.08)
        ht *= rng.uniform(0.92, 1.08)
        cls = {"car": CAR, "truck": TRUCK, "bus": BUS, "train": TRAIN}[kind]
        inst = self.new_instance()
        if kind == "car":
            col = _jitter(rng, self.vehicle_palette[rng.integers(len(self.vehicle_palette))], 0.05)
        elif kind == "bus":
            col = _jitter(rng, [(40, 90, 170), (200, 40, 40), (230, 200, 40), (235, 235, 235)][
                rng.integers(4)])  # fmt: skip
        elif kind == "train":
            col = _jitter(rng, [(30, 80, 170), (235, 235, 235), (200, 50, 40)][rng.integers(3)])
        else:
            col = _jitter(rng, [(220, 220, 215), (90, 100, 120), (170, 60, 40), (230, 180, 40)][
                rng.integers(4)])  # fmt: skip
        glass = (0.12, 0.14, 0.17)
        x0, x1 = x - wd / 2, x + wd / 2
        z0, z1 = z, z + ln

        def part(mat, color, shade=1.0, d=z0):
            return self.add_part(cls, mat, color, d, shade, kind, inst)

        # top face (seen from a high camera), then the side facing the camera, then rear
        if ht < self.cam.cam_h - 0.2:
            roof = part(M_BODY, col, 1.15)
            xa, xb = (x0 + 0.25, x1 - 0.25) if kind == "car" else (x0, x1)
            za, zb = (z0 + 1.0, z1 - 1.3) if kind == "car" else (z0, z1)
            pts = [(xa, ht, za), (xb, ht, za), (xb, ht, zb), (xa, ht, zb)]
            self._poly(draw, pts, roof)
            self._poly(tdraw, pts, 255)
        if x1 < -0.3 or x0 > 0.3:
            xs = x1 if x1 < 0 else x0
            side = part(M_BODY, col, 0.72, z0 + ln / 2)
            self._poly(draw, [(xs, 0.3, z0), (xs, 0.3, z1), (xs, ht, z1), (xs, ht, z0)], side)
            if kind in ("bus", "train") or kind == "car":
                wlo, whi = (0.95, ht - 0.08) if kind == "car" else (1.3, ht - 0.5)
                sg = part(M_GLASS, glass, 0.8, z0 + ln / 2)
                za, zb = z0 + 0.4, z1 - 0.4
                if kind == "car":
                    za, zb = z0 + 1.0, z1 - 1.2
                self._poly(draw, [(xs, wlo, za), (xs, wlo, zb), (xs, whi, zb), (xs, whi, za)], sg)
            if kind == "truck":  # cab at the front, lower than the box
                cab = part(M_BODY, _jitter(rng, (200, 200, 200)), 0.72, z1)
                self._poly(draw, [(xs, 0.3, z1 - 0.2), (xs, 0.3, z1 + 2.0), (xs, 2.6, z1 + 2.0),
                                  (xs, 2.6, z1 - 0.2)], cab)  # fmt: skip
            wheel = part(M_RUBBER, (0.05, 0.05, 0.05), 1.0, z0 + ln / 2)
            for zw in (z0 + 0.8, z1 - 0.9) if kind != "train" else ():
                self._poly(draw, [(xs, 0.0, zw - 0.35), (xs, 0.0, zw + 0.35), (xs, 0.65, zw + 0.35),
                                  (xs, 0.65, zw - 0.35)], wheel)  # fmt: skip
        body = part(M_BODY, col)
        if kind == "car":  # lower body + narrower cabin
            self._rect(draw, x0, x1, 0.3, ht * 0.58, z0, body)
            self._poly(draw, [(x0 + 0.05, ht * 0.58, z0 + 0.3), (x1 - 0.05, ht * 0.58, z0 + 0.3),
                              (x1 - 0.22, ht, z0 + 0.9), (x0 + 0.22, ht, z0 + 0.9)], body)  # fmt: skip
            win = part(M_GLASS, glass)
            self._poly(draw, [(x0 + 0.15, ht * 0.62, z0 + 0.35), (x1 - 0.15, ht * 0.62, z0 + 0.35),
                              (x1 - 0.28, ht * 0.95, z0 + 0.85), (x0 + 0.28, ht * 0.95, z0 + 0.85)],
                       win)  # fmt: skip
        else:
            self._rect(draw, x0, x1, 0.3, ht, z0, body)
            if kind in ("bus", "train"):
                win = part(M_GLASS, glass)
                self._rect(draw, x0 + 0.15, x1 - 0.15, ht * 0.5, ht * 0.9, z0, win)
            else:  # box doors
                seam = part(M_METAL, tuple(c * 0.7 for c in col))
                self._rect(draw, x - 0.03, x + 0.03, 0.5, ht - 0.1, z0, seam)
        tyre = part(M_RUBBER, (0.05, 0.05, 0.05))
        self._rect(draw, x0 + 0.1, x0 + 0.45, 0.0, 0.35, z0 + 0.3, tyre)
        self._rect(draw, x1 - 0.45, x1 - 0.1, 0.0, 0.35, z0 + 0.3, tyre)
        lamp_c = (1.0, 0.95, 0.8) if oncoming else (0.8, 0.05, 0.05)
        lamp = part(M_LAMP, lamp_c)
        yl = 0.75 if kind == "car" else 0.9
        for xl in (x0 + 0.12, x1 - 0.32):
            self._rect(draw, xl, xl + 0.2, yl, yl + 0.15, z0 - 0.01, lamp)
            u, v = self.cam.project(xl + 0.1, yl + 0.07, z0)
            self.lights.append(Light(u, v, self.cam.f * (0.6 if oncoming else 0.3) / z0, lamp_c,
                                     1.0 if oncoming else 0.6))  # fmt: skip

    def _person(self, draw, x, z, rider_pose=False, cls=PERSON, inst=None, y0=0.0) -> None:
        rng = self.rng
        inst = inst or self.new_instance()
        kind = "person" if cls == PERSON else "rider"
        hgt = rng.uniform(1.6, 1.9)
        top = _jitter(rng, CLOTH_COLORS[rng.integers(len(CLOTH_COLORS))], 0.1)
        bottom = _jitter(rng, CLOTH_COLORS[rng.integers(len(CLOTH_COLORS))], 0.1)
        skin = _jitter(rng, SKIN_COLORS[rng.integers(len(SKIN_COLORS))], 0.05)
        p_top = self.add_part(cls, M_CLOTH, top, z, 1.0, kind, inst)
        p_bot = self.add_part(cls, M_CLOTH, bottom, z, 1.0, kind, inst)
        p_skin = self.add_part(cls, M_SKIN, skin, z, 1.0, kind, inst)
        s = hgt / 1.75
        if rider_pose:  # seated, leaning forward, seen from the side
            self._poly(draw, [(x - 0.15 * s, y0 + 0.75 * s, z), (x + 0.1 * s, y0 + 0.75 * s, z),
                              (x + 0.35 * s, y0 + 1.35 * s, z), (x + 0.1 * s, y0 + 1.4 * s, z)],
                       p_top)  # fmt: skip
            self._poly(draw, [(x - 0.15 * s, y0 + 0.8 * s, z), (x + 0.05 * s, y0 + 0.8 * s, z),
                              (x + 0.25 * s, y0 + 0.2 * s, z), (x + 0.1 * s, y0 + 0.15 * s, z)],
                       p_bot)  # fmt: skip
            hx, hy = x + 0.3 * s, y0 + 1.5 * s
        else:
            stride = rng.uniform(-0.15, 0.15)
            self._poly(draw, [(x - 0.16 * s, 0.85 * s, z), (x - 0.02 * s, 0.85 * s, z),
                              (x - 0.05 * s + stride, 0, z), (x - 0.17 * s + stride, 0, z)],
                       p_bot)  # fmt: skip
            self._poly(draw, [(x + 0.02 * s, 0.85 * s, z), (x + 0.16 * s, 0.85 * s, z),
                              (x + 0.17 * s - stride, 0, z), (x + 0.05 * s - stride, 0, z)],
                       p_bot)  # fmt: skip
            self._poly(
                draw,
                [
                    (x - 0.22 * s, 0.82 * s, z),
                    (x + 0.22 * s, 0.82 * s, z),
                    (x + 0.2 * s, 1.45 * s, z),
                    (x - 0.2 * s, 1.45 * s, z),
                ],
                p_top,
            )
            for sx in (-1, 1):  # arms
                self._poly(draw, [(x + sx * 0.2 * s, 1.42 * s, z), (x + sx * 0.28 * s, 1.4 * s, z),
                                  (x + sx * 0.3 * s, 0.85 * s, z), (x + sx * 0.22 * s, 0.85 * s, z)],
                           p_top)  # fmt: skip
            hx, hy = x, 1.6 * s
        r = 0.12 * s
        (u0, v0), (u1, v1) = (
            self.cam.project(hx - r, hy + r, z),
            self.cam.project(hx + r, hy - r, z),
        )
        draw.ellipse([u0, v0, max(u1, u0 + 1), max(v1, v0 + 1)], fill=p_skin)

    def _twowheeler(self, draw, x, z, motor, rider) -> None:
        rng = self.rng
        kind = "motorcycle" if motor else "bicycle"
        cls = MOTO if motor else BIKE
        inst = self.new_instance()
        frame_c = _jitter(rng, [(30, 30, 30), (180, 30, 30), (40, 70, 150), (200, 200, 200)][
            rng.integers(4)])  # fmt: skip
        pid = self.add_part(cls, M_METAL, frame_c, z, 1.0, kind, inst)
        tyre = self.add_part(cls, M_RUBBER, (0.06, 0.06, 0.06), z, 1.0, kind, inst)
        d = rng.choice([-1, 1])  # facing left or right
        r = 0.32 if motor else 0.34
        half = 0.65 if motor else 0.55
        f_over_z = self.cam.f / z
        lw = max(1, round(0.1 * f_over_z))
        for xc in (x - half, x + half):
            (u0, v0) = self.cam.project(xc - r, 2 * r, z)
            (u1, v1) = self.cam.project(xc + r, 0.0, z)
            if motor:
                draw.ellipse([u0, v0, max(u1, u0 + 1), max(v1, v0 + 1)], fill=tyre)
            else:
                draw.ellipse([u0, v0, max(u1, u0 + 1), max(v1, v0 + 1)], outline=tyre, width=lw)
        if motor:
            self._poly(draw, [(x - half, r, z), (x + half, r, z), (x + half * 0.8 * d, 0.95, z),
                              (x - half * 0.6 * d, 0.85, z)], pid)  # fmt: skip
        else:
            pts = [(x - half, r), (x, r), (x + half * 0.6 * d, 0.85), (x - half * 0.1 * d, 0.85),
                   (x - half, r), (x + half, r), (x + half * 0.6 * d, 0.85)]  # fmt: skip
            uv = [self.cam.project(px, py, z) for px, py in pts]
            draw.line(uv, fill=pid, width=lw)
        if rider:  # the person on it is a "rider" (the Cityscapes class word)
            self._person(draw, x - 0.1 * d, z - 0.01, rider_pose=True, cls=RIDER, y0=0.2)

    def _pole(self, draw, x, z, kind, sign) -> None:
        rng = self.rng
        inst = self.new_instance()
        metal = _jitter(rng, (110, 112, 115))
        hgt = rng.uniform(5.0, 8.0) if kind != "sign" else rng.uniform(2.6, 3.4)
        pid = self.add_part(POLE, M_METAL, metal, z, 1.0, "pole", inst)
        pw = 0.09
        u0, _ = self.cam.project(x - pw, 0, z)
        u1, _ = self.cam.project(x + pw, 0, z)
        if u1 - u0 < 1:  # keep thin poles at least one pixel wide
            self._poly(draw, [(x, 0, z), (x, hgt, z)], pid)
            _, vt = self.cam.project(x, hgt, z)
            _, vb = self.cam.project(x, 0, z)
            draw.line([(u0, vt), (u0, vb)], fill=pid, width=1)
        else:
            self._rect(draw, x - pw, x + pw, 0, hgt, z, pid)
        if kind == "lamp":  # an arm over the road with a lamp head
            arm = x - sign * 1.8
            self._rect(draw, min(x, arm), max(x, arm), hgt - 0.15, hgt, z, pid)
            head = self.add_part(POLE, M_LAMP, (0.9, 0.9, 0.85), z, 1.0, "pole", inst)
            self._rect(draw, arm - 0.3, arm + 0.3, hgt - 0.3, hgt - 0.1, z - 0.01, head)
            u, v = self.cam.project(arm, hgt - 0.3, z)
            self.lights.append(Light(u, v, self.cam.f * 1.2 / z, (1.0, 0.85, 0.6), 1.0, True))
        elif kind == "light":
            inst_l = self.new_instance()
            box = self.add_part(LIGHT, M_METAL, (0.12, 0.12, 0.1), z - 0.02, 1.0,
                                "traffic light", inst_l)  # fmt: skip
            yl = hgt - rng.uniform(0.0, 1.5)
            self._rect(draw, x - 0.25, x + 0.25, yl - 1.2, yl, z - 0.02, box)
            state = rng.integers(3)
            colors = ((1.0, 0.1, 0.05), (1.0, 0.7, 0.05), (0.1, 1.0, 0.3))
            for i in range(3):
                lit = i == state
                c = colors[i] if lit else tuple(0.25 * k for k in colors[i])
                lp = self.add_part(LIGHT, M_LAMP if lit else M_METAL, c, z - 0.03, 1.0,
                                   "traffic light", inst_l)  # fmt: skip
                yc = yl - 0.22 - 0.38 * i
                self._rect(draw, x - 0.14, x + 0.14, yc - 0.14, yc + 0.14, z - 0.03, lp)
                if lit:
                    u, v = self.cam.project(x, yc, z)
                    self.lights.append(Light(u, v, self.cam.f * 0.4 / z, c, 0.8))
        else:
            inst_s = self.new_instance()
            shape = rng.integers(3)
            face = [(0.85, 0.1, 0.1), (0.1, 0.3, 0.8), (0.95, 0.8, 0.1)][shape]
            sp = self.add_part(SIGN, M_SIGN, face, z - 0.02, 1.0, "traffic sign", inst_s)
            yc, r = hgt - 0.35, 0.33
            if shape == 0:
                (u0, v0), (u1, v1) = (self.cam.project(x - r, yc + r, z - 0.02),
                                      self.cam.project(x + r, yc - r, z - 0.02))  # fmt: skip
                draw.ellipse([u0, v0, max(u1, u0 + 1), max(v1, v0 + 1)], fill=sp)
            elif shape == 1:
                self._rect(draw, x - r, x + r, yc - r * 0.8, yc + r * 0.8, z - 0.02, sp)
            else:
                self._poly(draw, [(x - r, yc + r * 0.6, z - 0.02), (x + r, yc + r * 0.6, z - 0.02),
                                  (x, yc - r, z - 0.02)], sp)  # fmt: skip

    def _tree(self, draw, x, z) -> None:
        rng = self.rng
        inst = self.new_instance()
        bark = self.add_part(VEG, M_BARK, _jitter(rng, (80, 65, 50)), z, 1.0, "tree", inst)
        leaf = self.add_part(VEG, M_FOLIAGE, _jitter(rng, (60, 95, 40), 0.15), z, 1.0, "tree", inst)
        th = rng.uniform(2.0, 3.5)
        self._rect(draw, x - 0.15, x + 0.15, 0, th + 0.5, z, bark)
        for _ in range(rng.integers(2, 5)):
            cx, cy = x + rng.uniform(-1.0, 1.0), th + rng.uniform(0.8, 2.5)
            rx, ry = rng.uniform(1.0, 2.2), rng.uniform(1.0, 2.0)
            (u0, v0), (u1, v1) = (
                self.cam.project(cx - rx, cy + ry, z),
                self.cam.project(cx + rx, cy - ry, z),
            )
            draw.ellipse([u0, v0, max(u1, u0 + 1), max(v1, v0 + 1)], fill=leaf)

    def _hood(self, part, depth) -> None:
        h, w = part.shape
        rows = self.cam.hood * h
        u = (np.arange(w) + 0.5) / w - 0.5
        edge = h - rows * (1 - 0.8 * u**2)  # a gently curved bonnet edge
        m = np.arange(h)[:, None] + 0.5 > edge[None, :]
        pid = self.add_part(VOID, M_HOOD, (0.1, 0.1, 0.11), 1.0)
        part[m] = pid
        depth[m] = 1.0


# ---------------------------------------------------------------------------------------
# Appearance
# ---------------------------------------------------------------------------------------

_NOISE: dict[int, np.ndarray] = {}


def _noise_tiles(seed: int = 1234) -> np.ndarray:
    """Return (3, 256, 512) float32 multi-octave value-noise tiles in [0, 1] (cached)."""
    if seed not in _NOISE:
        rng = np.random.default_rng(seed)
        tiles = []
        for cells in ((128, 256), (32, 64), (8, 16)):
            acc = np.zeros((256, 512), np.float32)
            for octave in range(3):
                k = 2**octave
                small = rng.random((cells[0] * k // 2 + 1, cells[1] * k // 2 + 1)).astype(
                    np.float32
                )
                big = cv2.resize(small, (512, 256), interpolation=cv2.INTER_CUBIC)
                acc += big / k
            acc = (acc - acc.min()) / (acc.max() - acc.min())
            tiles.append(acc)
        _NOISE[seed] = np.stack(tiles)
    return _NOISE[seed]


def _crop_tile(rng: np.random.Generator, tile: np.ndarray, h: int, w: int) -> np.ndarray:
    th, tw = tile.shape
    if h > th or w > tw:
        tile = cv2.resize(tile, (max(w, tw), max(h, th)))
        th, tw = tile.shape
    y, x = rng.integers(0, th - h + 1), rng.integers(0, tw - w + 1)
    return tile[y : y + h, x : x + w]


def _saturate(img: np.ndarray, s: float) -> np.ndarray:
    grey = img.mean(-1, keepdims=True)
    return np.clip(grey + (img - grey) * s, 0, 1)


def _glow(h, w, lights, scale=1.0) -> np.ndarray:
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


def render_appearance(layout: Layout, domain: Domain, rng: np.random.Generator) -> np.ndarray:
    """Return the (H, W, 3) uint8 picture of a layout in a domain's look and condition."""
    look, cond = domain.look, domain.condition
    cam = layout.camera
    h, w = layout.part.shape
    parts = layout.parts
    base = (
        np.array([p.color for p in parts], np.float32)
        * np.array([p.shade for p in parts], np.float32)[:, None]
    )
    mats = np.array([p.material for p in parts], np.int64)
    # domain palette: saturation and per-channel gains
    base = _saturate(base, look.saturation) * np.asarray(look.palette_shift, np.float32)
    img = base[layout.part]  # (H, W, 3)
    mat = mats[layout.part]
    sky = mat == M_SKY
    rows = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / h
    # sky: a vertical gradient (+ clouds in photographs)
    if look.synthetic:
        top_c, hor_c = np.array([0.25, 0.5, 0.95]), np.array([0.65, 0.85, 1.0])
    else:
        top_c, hor_c = np.array([0.5, 0.62, 0.78]), np.array([0.82, 0.86, 0.9])
    t = np.clip(rows / max(cam.horizon / h, 0.05), 0, 1)[..., None]
    sky_img = top_c * (1 - t) + hor_c * t
    sky_img = np.broadcast_to(sky_img, (h, w, 3)).astype(np.float32)
    tiles = _noise_tiles()
    if not look.synthetic:
        clouds = _crop_tile(rng, tiles[2], h, w)[..., None]
        sky_img = sky_img * (1 - 0.35 * clouds) + 0.35 * clouds * 0.95
        # material textures: fine grain and medium blotches, modulated per material
        fine = _crop_tile(rng, tiles[0], h, w) - 0.5
        mid = _crop_tile(rng, tiles[1], h, w) - 0.5
        gain = TEXTURE_GAIN[mat] * look.texture
        img = img * (1 + (gain * (1.2 * fine + 0.8 * mid))[..., None])
        # soft light falloff with distance (aerial perspective, a little)
        aerial = np.exp(-layout.depth / 400.0)[..., None]
        img = img * aerial + (1 - aerial) * hor_c
    img = np.where(sky[..., None], sky_img, img)
    depth = layout.depth

    if cond == "fog":
        beta = rng.uniform(0.025, 0.06)  # visibility 3/beta: 50-120 m
        airlight = rng.uniform(0.72, 0.85)
        trans = np.exp(-beta * np.minimum(depth, 1e3))[..., None]
        img = img * trans + airlight * (1 - trans)
        img = _saturate(img, 0.7)
    elif cond == "rain":
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
        # streaks
        streak = Image.new("L", (w, h), 0)
        sd = ImageDraw.Draw(streak)
        ang = rng.uniform(-0.3, 0.3)
        for _ in range(int(rng.uniform(60, 140) * w * h / (128 * 256))):
            x0, y0 = rng.uniform(-20, w + 20), rng.uniform(-20, h)
            ln = rng.uniform(6, 16)
            sd.line([(x0, y0), (x0 + ln * ang, y0 + ln)], fill=int(rng.uniform(60, 140)), width=1)
        st = np.asarray(streak, np.float32)[..., None] / 255.0
        img = img * (1 - 0.45 * st) + 0.85 * 0.45 * st
    elif cond == "snow":
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
        flakes = Image.new("L", (w, h), 0)
        fd = ImageDraw.Draw(flakes)
        for _ in range(int(rng.uniform(30, 80) * w * h / (128 * 256))):
            x0, y0, r = rng.uniform(0, w), rng.uniform(0, h), rng.choice([0.5, 0.8, 1.3])
            fd.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=int(rng.uniform(150, 255)))
        fl = np.asarray(flakes, np.float32)[..., None] / 255.0
        img = img * (1 - fl) + fl
    elif cond == "night":
        sodium = domain.name == "darkzurich"
        lamp_c = np.array((1.0, 0.62, 0.25) if sodium else (1.0, 0.9, 0.75), np.float32)
        ambient = rng.uniform(0.22, 0.32)
        night = img * ambient * np.array([0.8, 0.85, 1.1])
        # light pools of street lamps on the ground and nearby surfaces
        vv, uu = np.mgrid[0:h, 0:w].astype(np.float32)
        pool = np.zeros((h, w), np.float32)
        for lt in layout.lights:
            if not lt.pool:
                continue
            # the lamp lights a disc on the ground below it: an ellipse in the image
            zl = cam.f * 1.2 / max(lt.radius, 1e-3)
            _, vg = cam.project(0.0, 0.0, zl)
            rx, ry = cam.f * 6.0 / zl, max(cam.f * 6.0 / zl * 0.45, 1.0)
            pool += 0.6 * np.exp(-(((uu - lt.u) / rx) ** 2 + ((vv - vg) / ry) ** 2))
            pool += 0.25 * np.exp(
                -(((uu - lt.u) / rx) ** 2 + ((vv - (lt.v + vg) / 2) / (ry * 3)) ** 2)
            )
        night = night + img * pool[..., None] * lamp_c
        # headlights of the ego car light the road ahead
        ego = np.exp(-np.maximum(depth - 3, 0) / rng.uniform(6, 12)) * layout.ground
        night = night + img * ego[..., None] * 0.35 * np.array([1.0, 0.97, 0.9])
        sky_c = np.array((0.06, 0.05, 0.05) if sodium else (0.03, 0.04, 0.08), np.float32)
        haze = np.clip(1 - np.abs(rows - cam.horizon / h) * 4, 0, 1)[..., None] * 0.08
        night = np.where(sky[..., None], sky_c + haze * lamp_c, night)
        win = layout.window_lit
        night = np.where(win[..., None], np.array([0.9, 0.75, 0.4]) * rng.uniform(0.35, 0.7),
                         night)  # fmt: skip
        lamps = mat == M_LAMP
        night = np.where(lamps[..., None], np.clip(img * 1.2, 0, 1), night)
        night += _glow(h, w, layout.lights, 1.0) * 0.5
        img = night
        # night photographs are noisy and a little blurred
        img = img + rng.normal(0, rng.uniform(0.012, 0.022), img.shape).astype(np.float32)

    # camera: tint/exposure (varied cameras), blur, vignetting, sensor noise
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
    out = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    return out


# ---------------------------------------------------------------------------------------
# One sample: picture, trainIds, caption
# ---------------------------------------------------------------------------------------

_NUMBER = {1: "a", 2: "two", 3: "three", 4: "four", 5: "five"}
_PLURAL = {"person": "people", "bus": "buses", "tree": "trees", "traffic light": "traffic lights",
           "traffic sign": "traffic signs", "rider": "riders",
           "bicycle": "bicycles", "motorcycle": "motorcycles", "car": "cars", "truck": "trucks",
           "train": "trains", "pole": "poles"}  # fmt: skip


#: Stuff classes a caption names when they cover at least this share of the picture
#: (by Cityscapes class name, largest first; at most ``max_stuff`` of them).
_STUFF_SHARE = {ROAD: 0.01, SIDEWALK: 0.01, BUILDING: 0.01, WALL: 0.005, FENCE: 0.005,
                POLE: 0.003, VEG: 0.01, TERRAIN: 0.01, SKY: 0.01}  # fmt: skip


def caption_for(
    layout: Layout, domain: Domain, min_area: int = 12, max_items: int = 5, max_stuff: int = 6
) -> str:
    """Return a caption naming style, condition, the visible stuff and the objects of a layout.

    E.g. "a photo of a street scene at night showing road, building, sky and sidewalk, with
    two cars and a person". Stuff is named by its Cityscapes class name, so that the class
    names of category prompts occur in the captions the embedded model is pretrained on.
    """
    lab = layout.label
    share = np.bincount(lab.ravel(), minlength=256)[: len(L.CLASSES)] / lab.size
    stuff = sorted((c for c, t in _STUFF_SHARE.items() if share[c] >= t), key=lambda c: -share[c])
    stuff = [L.CLASSES[c] for c in stuff[:max_stuff]]
    parts = layout.parts
    area = np.bincount(layout.part.ravel(), minlength=len(parts))
    per_kind: dict[str, dict[int, int]] = {}
    for i, p in enumerate(parts):
        if p.kind and area[i] > 0:
            per_kind.setdefault(p.kind, {}).setdefault(p.instance, 0)
            per_kind[p.kind][p.instance] += int(area[i])
    items = []
    for kind, inst in per_kind.items():
        n = sum(1 for a in inst.values() if a >= min_area)
        if n and kind != "pole":
            items.append((sum(inst.values()), kind, n))
    items.sort(reverse=True)
    words = []
    for _, kind, n in items[:max_items]:
        if kind == "tree":
            words.append("trees" if n > 1 else "a tree")
        elif n == 1:
            words.append(("an " if kind[0] in "aeiou" else "a ") + kind)
        else:
            words.append(f"{_NUMBER.get(n, 'many')} {_PLURAL[kind]}")
    text = f"{domain.style_words} {CONDITION_WORDS[domain.condition]}"
    if stuff:
        text += " showing " + (
            stuff[0] if len(stuff) == 1 else ", ".join(stuff[:-1]) + " and " + stuff[-1]
        )
    if words:
        text += ","
    if words:
        text += " with " + (
            words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
        )
    return text


def render_sample(domain_name: str, seed: tuple[int, ...], height: int = 128, width: int = 256):
    """Return (image (H, W, 3) uint8, trainIds (H, W) uint8, caption, layout) of one scene."""
    domain = DOMAINS[domain_name]
    rng = np.random.default_rng(list(seed))
    cam = sample_camera(rng, domain.camera, height, width)
    layout = SceneBuilder(rng, domain, cam).build()
    img = render_appearance(layout, domain, rng)
    lab = layout.label
    if abs(cam.roll) > 0.05:  # a tilted camera: rotate picture and labels together
        img = np.asarray(Image.fromarray(img).rotate(cam.roll, Image.BILINEAR, fillcolor=(0, 0, 0)))
        lab = np.asarray(Image.fromarray(lab).rotate(cam.roll, Image.NEAREST, fillcolor=VOID))
    return img, lab, caption_for(layout, domain), layout


# ---------------------------------------------------------------------------------------
# Writing the real layouts
# ---------------------------------------------------------------------------------------

CITIES = {"train": ("aachen", "bochum", "bremen", "cologne", "darmstadt", "dusseldorf"),
          "val": ("frankfurt", "lindau", "munster")}  # fmt: skip
ACDC_SEQ = {"fog": 475, "night": 1030, "rain": 1090, "snow": 122}
SYNTHIA_IDS = np.full(256, 0, np.uint16)  # trainId -> SYNTHIA id (void 0)
for _sid, _, _tid in L.SYNTHIA_LABELS:
    if _tid != VOID and _sid != 22:
        SYNTHIA_IDS[_tid] = _sid
SYNTHIA_IDS[TERRAIN], SYNTHIA_IDS[TRUCK], SYNTHIA_IDS[TRAIN] = 16, 18, 20
CS_IDS = np.zeros(256, np.uint8)  # trainId -> Cityscapes id (void -> 0 unlabeled)
CS_IDS[: L.NUM_CLASSES] = L.TRAINID_TO_CITYSCAPES_ID
MAPILLARY_IDS = np.full(256, L.MAPILLARY_V12_NAMES.index("void--unlabeled"), np.uint8)
for _tid, _name in enumerate(
    ("construction--flat--road", "construction--flat--sidewalk",
     "construction--structure--building", "construction--barrier--wall",
     "construction--barrier--fence", "object--support--pole", "object--traffic-light",
     "object--traffic-sign--front", "nature--vegetation", "nature--terrain", "nature--sky",
     "human--person", "human--rider--bicyclist", "object--vehicle--car",
     "object--vehicle--truck", "object--vehicle--bus", "object--vehicle--on-rails",
     "object--vehicle--motorcycle", "object--vehicle--bicycle")
):  # fmt: skip
    MAPILLARY_IDS[_tid] = L.MAPILLARY_V12_NAMES.index(_name)


def _file_names(dataset: str, split: str, i: int, seed: int) -> tuple[str, str, str]:
    """Return (name, image path, label path) relative to the data set folder."""
    rng = np.random.default_rng([seed, 99, i, len(split)])
    if dataset == "gta5":
        n = f"{i + 1:05d}"
        return n, f"images/{n}.png", f"labels/{n}.png"
    if dataset == "synthia":
        n = f"{i:07d}"
        return n, f"RGB/{n}.png", f"GT/LABELS/{n}.png"
    if dataset == "cityscapes":
        cities = CITIES[split]
        city = cities[i % len(cities)]
        n = f"{city}_{i // len(cities):06d}_000019"
        return (n, f"leftImg8bit/{split}/{city}/{n}_leftImg8bit.png",
                f"gtFine/{split}/{city}/{n}_gtFine_labelIds.png")  # fmt: skip
    if dataset == "bdd100k":
        n = "".join(rng.choice(list("0123456789abcdef"), 8)) + "-" + "".join(
            rng.choice(list("0123456789abcdef"), 8)) + f"{i:03x}"[-3:]  # fmt: skip
        return n, f"images/10k/{split}/{n}.jpg", f"labels/sem_seg/masks/{split}/{n}.png"
    if dataset == "mapillary":
        folder = {"train": "training", "val": "validation"}[split]
        n = "".join(rng.choice(list(string.ascii_letters + string.digits + "-_"), 19)) + f"{i:03d}"
        return n, f"{folder}/images/{n}.jpg", f"{folder}/v1.2/labels/{n}.png"
    if dataset.startswith("acdc_"):
        cond = dataset.split("_")[1]
        base = ACDC_SEQ[cond] + {"train": 0, "val": 300, "test": 600}[split]
        seq = f"GOPR{base + i // 20:04d}"
        n = f"{seq}_frame_{(i % 20) * 37:06d}"
        return (n, f"rgb_anon/{cond}/{split}/{seq}/{n}_rgb_anon.png",
                f"gt/{cond}/{split}/{seq}/{n}_gt_labelTrainIds.png")  # fmt: skip
    if dataset == "darkzurich":
        seq = f"GOPR{356 + {'train': 0, 'val': 100, 'test': 200}[split] + i // 25:04d}"
        n = f"{seq}_frame_{(i % 25) * 12:06d}"
        return (n, f"rgb_anon/{split}/night/{seq}/{n}_rgb_anon.png",
                f"gt/{split}/night/{seq}/{n}_gt_labelTrainIds.png")  # fmt: skip
    raise KeyError(dataset)


#: (data set, split) pairs whose labels are withheld, as in the real data sets
UNLABELED = {("acdc_fog", "test"), ("acdc_night", "test"), ("acdc_rain", "test"),
             ("acdc_snow", "test"), ("darkzurich", "train"), ("darkzurich", "test")}  # fmt: skip

#: the folder (below the data root) of each miniature data set
FOLDER = {"gta5": "gta5", "synthia": "synthia", "cityscapes": "cityscapes", "bdd100k": "bdd100k",
          "mapillary": "mapillary", "acdc_fog": "acdc", "acdc_night": "acdc", "acdc_rain": "acdc",
          "acdc_snow": "acdc", "darkzurich": "dark_zurich"}  # fmt: skip


def _write_label(dataset: str, path: Path, trainids: np.ndarray, layout: Layout) -> None:
    if dataset == "gta5":
        im = Image.fromarray(CS_IDS[trainids], mode="P")
        im.putpalette(L.CITYSCAPES_ID_PALETTE)
        im.save(path)
    elif dataset == "synthia":
        ids = SYNTHIA_IDS[trainids]
        inst = np.array([p.instance for p in layout.parts], np.uint16)[layout.part]
        bgr = np.zeros((*ids.shape, 3), np.uint16)
        bgr[..., 2] = ids  # red channel: class id (OpenCV writes BGR)
        bgr[..., 1] = np.where(np.isin(trainids, range(11, 19)), inst, 0)  # green: instance
        cv2.imwrite(str(path), bgr)
    elif dataset == "cityscapes":
        ids = CS_IDS[trainids]
        if layout.camera.hood > 0:
            hood = np.array([p.material == M_HOOD for p in layout.parts])[layout.part]
            ids = np.where(hood, 1, ids).astype(np.uint8)  # id 1: ego vehicle
        Image.fromarray(ids, mode="L").save(path)
    elif dataset == "mapillary":
        Image.fromarray(MAPILLARY_IDS[trainids], mode="L").save(path)
    else:
        Image.fromarray(trainids.astype(np.uint8), mode="L").save(path)


def _job(args) -> tuple[str, str, str]:
    """Render and write one sample. Returns (data set, name, caption)."""
    dataset, split, i, cfg_d, out = args
    seed = (
        cfg_d["seed"],
        list(DOMAINS).index(dataset),
        ["all", "train", "val", "test"].index(split),
        i,
    )
    img, lab, caption, layout = render_sample(dataset, seed, cfg_d["height"], cfg_d["width"])
    name, ip, lp = _file_names(dataset, split, i, cfg_d["seed"])
    root = Path(out) / FOLDER[dataset]
    (root / ip).parent.mkdir(parents=True, exist_ok=True)
    if ip.endswith(".jpg"):
        q = DOMAINS[dataset].look.jpeg or 90
        Image.fromarray(img).save(root / ip, quality=q)
    else:
        Image.fromarray(img).save(root / ip, compress_level=1)
    if (dataset, split) not in UNLABELED:
        (root / lp).parent.mkdir(parents=True, exist_ok=True)
        _write_label(dataset, root / lp, lab, layout)
    return dataset, name, caption


def generate(
    out: Path, cfg: ToyWorldConfig | None = None, workers: int | None = None, progress: bool = False
) -> dict:
    """Write the whole miniature below ``out`` (which must not exist). Returns a summary."""
    cfg = cfg or ToyWorldConfig()
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; generate() writes into a new folder")
    out.mkdir(parents=True)
    t0 = time.time()
    cfg_d = asdict(cfg)
    jobs = [(d, s, i, cfg_d, str(out)) for d, splits in cfg.split_counts().items()
            for s, n in splits.items() for i in range(n)]  # fmt: skip
    workers = workers or min(os.cpu_count() or 1, 4)
    if workers > 1:
        with mp.get_context("spawn").Pool(workers) as pool:
            results = pool.map(_job, jobs, chunksize=16)
    else:
        results = [_job(j) for j in jobs]
    captions: dict[str, dict[str, dict[str, str]]] = {}
    for dataset, name, caption in results:
        folder = FOLDER[dataset]
        cond = DOMAINS[dataset].condition
        captions.setdefault(folder, {})[name] = {"caption": caption, "condition": cond}
    for folder, caps in captions.items():
        (out / folder / "captions.json").write_text(json.dumps(caps, indent=0, sort_keys=True))
    # GTA5's split file and Mapillary's label config, as in the real downloads
    from scipy.io import savemat

    n = cfg.split_counts()["gta5"]["all"]
    ids = np.arange(1, n + 1)
    savemat(out / "gta5" / "split.mat", {"trainIds": ids[: int(0.7 * n)][:, None],
                                         "valIds": ids[int(0.7 * n): int(0.85 * n)][:, None],
                                         "testIds": ids[int(0.85 * n):][:, None]})  # fmt: skip
    cfg_labels = [{"name": nm, "readable": nm.split("--")[-1].replace("-", " ").title(),
                   "color": [int(c) for c in np.random.default_rng(k).integers(0, 256, 3)],
                   "instances": False, "evaluate": not nm.startswith("void")}
                  for k, nm in enumerate(L.MAPILLARY_V12_NAMES)]  # fmt: skip
    (out / "mapillary" / "config_v1.2.json").write_text(json.dumps({"labels": cfg_labels}))
    summary = {**cfg.stamp(), "images": len(jobs), "seconds": round(time.time() - t0, 2)}
    (out / "toyworld.json").write_text(json.dumps(summary, indent=1))
    return summary


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def is_current(root: Path, cfg: ToyWorldConfig | None = None) -> bool:
    """Return whether ``root`` holds a miniature made by this generator with ``cfg``."""
    stamp = Path(root) / "toyworld.json"
    if not stamp.is_file():
        return False
    try:
        have = json.loads(stamp.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    want = (cfg or ToyWorldConfig()).stamp()
    return all(have.get(k) == json.loads(json.dumps(v)) for k, v in want.items())


def ensure_miniature(
    root: Path | None = None,
    cfg: ToyWorldConfig | None = None,
    force: bool = False,
    verbose: bool = False,
) -> Path:
    """Return the miniature's data root, generating it first when missing or stale.

    Generation goes to a temporary sibling folder that is renamed into place, under a file
    lock, so concurrent callers wait and an interrupted run leaves nothing half-written.
    """
    root = Path(root) if root is not None else miniature_root()
    cfg = cfg or ToyWorldConfig()
    if not force and is_current(root, cfg):
        return root
    with _lock(root.parent / f".{root.name}.lock"):
        if not force and is_current(root, cfg):
            return root
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-tmp-", dir=root.parent))
        try:
            tmp.rmdir()
            if verbose:
                print(f"generating the miniature into {root} ...", flush=True)
            summary = generate(tmp, cfg)
            if root.exists():
                old = root.with_name(f".{root.name}-old-{os.getpid()}")
                root.rename(old)
                shutil.rmtree(old, ignore_errors=True)
            tmp.rename(root)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        if verbose:
            print(f"{summary['images']} images in {summary['seconds']} s", flush=True)
    return root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Generate the embedded miniature data sets.")
    ap.add_argument("--root", type=Path, default=None, help="output data root")
    ap.add_argument("--force", action="store_true", help="regenerate even if current")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every split's size")
    args = ap.parse_args(argv)
    root = ensure_miniature(args.root, ToyWorldConfig(seed=args.seed, scale=args.scale),
                            force=args.force, verbose=True)  # fmt: skip
    print(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
