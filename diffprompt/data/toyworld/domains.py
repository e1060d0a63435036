"""The ten miniature domains: each data set's city, camera, look, condition and caption
words (plain frozen dataclasses; every stage of the generator reads them).

A ``CityModel`` is a 'world' the cameras drive through (street widths, building sizes,
facade palette, how many trees and trams); a ``CameraModel`` is the distribution of one
data set's camera; a ``Look`` is how parts become pixels (palette, textures, optics and
sensor); the ``condition`` (clear, fog, night, rain, snow) picks the weather pass of
``render.CONDITION_PASSES``.
"""

from __future__ import annotations

from dataclasses import dataclass


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
        (150, 140, 130),
        (170, 160, 145),
        (120, 110, 105),
        (160, 120, 100),
        (140, 140, 145),
        (185, 175, 160),
        (110, 100, 95),
    )
    sodium_lamps: bool = False  # street lamps light sodium orange at night, not white


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
    ),
)
CITY_SYNTHIA = CityModel(
    road_half_width=(5.0, 9.0),
    facade_colors=(
        (205, 190, 175),
        (190, 175, 170),
        (215, 205, 190),
        (175, 165, 160),
        (200, 180, 185),
    ),
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
    ),
    sodium_lamps=True,
)

LOOK_GAME = Look(synthetic=True, saturation=1.5, vehicle_palette="bright")
LOOK_SYNTHIA = Look(synthetic=True, saturation=1.15, palette_shift=(1.05, 0.98, 0.98))
LOOK_PHOTO = Look(
    synthetic=False,
    saturation=0.7,
    palette_shift=(0.97, 1.0, 0.98),
    texture=0.35,
    blur=0.7,
    noise=0.02,
    vignette=0.25,
)
LOOK_DASHCAM = Look(
    synthetic=False,
    saturation=0.6,
    palette_shift=(0.92, 1.0, 1.08),
    texture=0.35,
    blur=0.9,
    noise=0.03,
    vignette=0.45,
    jpeg=70,
)
LOOK_STREETLEVEL = Look(
    synthetic=False, saturation=0.8, texture=0.35, blur=0.6, noise=0.025, vignette=0.2, jpeg=80
)

CAM_GTA5 = CameraModel(fov=(70, 90))
CAM_SYNTHIA = CameraModel(fov=(80, 95), horizon=(0.06, 0.2), height=(3.5, 6.0))  # high, down
CAM_CITYSCAPES = CameraModel(fov=(70, 80), hood=(0.07, 0.1), hood_prob=1.0)
CAM_BDD100K = CameraModel(
    fov=(90, 105), horizon=(0.4, 0.55), height=(1.2, 1.5), hood=(0.08, 0.14), hood_prob=0.7
)
CAM_MAPILLARY = CameraModel(fov=(60, 100), horizon=(0.33, 0.6), height=(1.2, 2.5), roll=(-6, 6))
CAM_ACDC = CameraModel(fov=(80, 90), horizon=(0.4, 0.47), hood=(0.05, 0.08), hood_prob=0.5)
CAM_DARKZURICH = CameraModel(fov=(75, 85), horizon=(0.42, 0.5), height=(1.3, 1.6))

# caption prefixes naming the rendering style
RENDERED = "a rendered street scene"
RENDERED_ABOVE = "a rendered street scene seen from above"
PHOTO = "a photo of a street scene"
DASHCAM = "a dashcam photo of a street scene"
STREET_LEVEL = "a street-level photo"

#: The miniature domains by registry name. The order is part of every image's seed.
DOMAINS: dict[str, Domain] = {
    d.name: d
    for d in (
        Domain("gta5", CITY_GAME, CAM_GTA5, LOOK_GAME, "clear", RENDERED),
        Domain("synthia", CITY_SYNTHIA, CAM_SYNTHIA, LOOK_SYNTHIA, "clear", RENDERED_ABOVE),
        Domain("cityscapes", CITY_A, CAM_CITYSCAPES, LOOK_PHOTO, "clear", PHOTO),
        Domain("bdd100k", CITY_A, CAM_BDD100K, LOOK_DASHCAM, "clear", DASHCAM),
        # Mapillary: many devices, a random tint and exposure per image (vary_camera)
        Domain("mapillary", CITY_A, CAM_MAPILLARY, LOOK_STREETLEVEL, "clear", STREET_LEVEL, True),
        Domain("acdc_fog", CITY_A, CAM_ACDC, LOOK_PHOTO, "fog", PHOTO),
        Domain("acdc_night", CITY_A, CAM_ACDC, LOOK_PHOTO, "night", PHOTO),
        Domain("acdc_rain", CITY_A, CAM_ACDC, LOOK_PHOTO, "rain", PHOTO),
        Domain("acdc_snow", CITY_A, CAM_ACDC, LOOK_PHOTO, "snow", PHOTO),
        Domain("darkzurich", CITY_ZURICH_NIGHT, CAM_DARKZURICH, LOOK_PHOTO, "night", PHOTO),
    )
}

#: The caption words of each condition.
CONDITION_WORDS = {
    "clear": "in daylight",
    "fog": "in fog",
    "night": "at night",
    "rain": "in the rain",
    "snow": "in snow",
}
