"""The scene's vocabulary: trainIds and materials by name, the pinhole ``Camera``, the
``Part`` table every pixel indexes into, point ``Light``s, the sampled ``Street`` and the
rendered ``Layout``; and the small sampling helpers the scene and its objects share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from diffprompt import labels as L
from diffprompt.data.toyworld.domains import CameraModel, CityModel

# trainIds, by name, for readability
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEG, TERRAIN, SKY = range(11)
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTO, BIKE = range(11, 19)
VOID = L.IGNORE_INDEX

# materials (appearance only; the class comes from the part)
M_SKY, M_ASPHALT, M_PAINT, M_PAVING, M_CURB, M_GRASS, M_FACADE, M_GLASS = range(8)
M_CONCRETE, M_FENCE, M_FOLIAGE, M_BARK, M_METAL, M_BODY, M_RUBBER, M_SKIN = range(8, 16)
M_CLOTH, M_LAMP, M_SIGN, M_HOOD = range(16, 20)

Color = tuple[float, float, float]  # RGB in [0, 1]


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
    """One surface of the scene: what its pixels are labeled, made of and coloured."""

    cls: int  # trainId (255 = void)
    material: int
    color: Color  # base RGB in [0, 1]
    depth: float  # metres
    shade: float = 1.0  # face orientation (1 = facing the camera)
    kind: str = ""  # object kind for captions ("car", "person", ...)
    instance: int = 0  # object instance (for captions and SYNTHIA's instance channel)


@dataclass
class Light:
    """A point light in the picture (a lamp, a head/tail light, a lit traffic light)."""

    u: float
    v: float
    radius: float  # pixels
    color: Color
    strength: float
    pool: bool = False  # also lights the ground around (street lamps)


@dataclass
class PartTable:
    """The parts, lights and object instances of a scene as it is being built."""

    parts: list[Part] = field(default_factory=lambda: [Part(VOID, M_SKY, (0, 0, 0), 1e4)])
    lights: list[Light] = field(default_factory=list)
    n_instances: int = 0

    def add(
        self,
        cls: int,
        material: int,
        color: Color,
        depth: float,
        shade: float = 1.0,
        kind: str = "",
        instance: int = 0,
    ) -> int:
        """Append a part; return its id (the value its pixels hold in the part map)."""
        self.parts.append(Part(cls, material, color, depth, shade, kind, instance))
        return len(self.parts) - 1

    def new_instance(self) -> int:
        """Return the number of a new object instance (1, 2, ...)."""
        self.n_instances += 1
        return self.n_instances


@dataclass
class Street:
    """The street in world coordinates (metres; X right, Y up, Z forward)."""

    road_hw: float  # half width of the road
    road_xc: float  # X of the road centre (the camera drives in some lane)
    sidewalk: tuple[float, float]  # sidewalk widths, left and right
    grass: tuple[float, float]  # grass strip widths, left and right (0 = none)
    lanes: int

    @property
    def lane_width(self) -> float:
        """Return the width of one lane."""
        return 2 * self.road_hw / self.lanes


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


def sample_range(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    """Return a float drawn uniformly from [lo, hi)."""
    return float(rng.uniform(lo_hi[0], lo_hi[1]))


def jitter_color(
    rng: np.random.Generator, rgb: tuple[int, int, int], amount: float = 0.08
) -> Color:
    """Return ``rgb`` (0..255) in [0, 1] with a random gain and per-channel offset."""
    c = np.asarray(rgb, dtype=np.float32) / 255.0
    c = c * (1 + rng.uniform(-amount, amount)) + rng.uniform(-amount / 2, amount / 2, 3)
    return tuple(float(x) for x in np.clip(c, 0, 1))


def sample_camera(rng: np.random.Generator, model: CameraModel, h: int, w: int) -> Camera:
    """Return a camera drawn from a data set's camera model, for (h, w) pictures."""
    fov = math.radians(sample_range(rng, model.fov))
    f = (w / 2) / math.tan(fov / 2)
    hood = sample_range(rng, model.hood) if rng.random() < model.hood_prob else 0.0
    return Camera(
        width=w,
        height=h,
        f=f,
        cx=w / 2 + rng.uniform(-0.04, 0.04) * w,
        horizon=sample_range(rng, model.horizon) * h,
        cam_h=sample_range(rng, model.height),
        roll=sample_range(rng, model.roll),
        hood=hood,
    )


def sample_street(rng: np.random.Generator, city: CityModel) -> Street:
    """Return a street drawn from a city: road width and lanes, sidewalks, grass strips."""
    road_hw = sample_range(rng, city.road_half_width)
    road_xc = rng.uniform(-0.6, 0.6) * road_hw  # the camera drives in some lane
    sidewalk = (sample_range(rng, city.sidewalk), sample_range(rng, city.sidewalk))
    grass = tuple(sample_range(rng, (1.0, 4.0)) if rng.random() < 0.35 else 0.0 for _ in range(2))
    lanes = max(1, int(road_hw * 2 // 3.2))
    return Street(road_hw, road_xc, sidewalk, grass, lanes)


@dataclass
class Canvas:
    """The per-pixel buffers a scene is drawn into, nearest surface first by depth."""

    part: np.ndarray  # (H, W) int32 part ids
    depth: np.ndarray  # (H, W) float32 metres
    window_lit: np.ndarray  # (H, W) bool
    ground: np.ndarray  # (H, W) bool
    lane_dist: np.ndarray  # (H, W) float32

    @classmethod
    def empty(cls, h: int, w: int, sky: int) -> Canvas:
        """Return an (h, w) canvas of sky (part id ``sky``, depth 1e4)."""
        return cls(
            part=np.full((h, w), sky, np.int32),
            depth=np.full((h, w), 1e4, np.float32),
            window_lit=np.zeros((h, w), bool),
            ground=np.zeros((h, w), bool),
            lane_dist=np.full((h, w), np.inf, np.float32),
        )
