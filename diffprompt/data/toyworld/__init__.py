"""The embedded miniature: procedurally generated street scenes written as miniature copies
of GTA5, SYNTHIA, Cityscapes, BDD100K, Mapillary, ACDC and Dark Zurich, in their real
on-disk layouts and label formats, so that the same loaders read them.

How a picture is made (numpy, PIL and cv2; deterministic by seed), module by module:

1. ``domains``: ``DOMAINS`` gives each data set its city (``CityModel``), camera
   (``CameraModel``), look (``Look``), condition and caption words.
2. ``world.sample_camera`` draws a pinhole camera; ``scene.build_layout`` draws a street
   in world coordinates (``world.sample_street``: road, lanes, sidewalks, grass) and
   renders it to a ``Layout``: the ground and the facades per pixel with a depth test,
   then the objects (``objects.place_objects``, ``objects.draw_objects``: vehicles,
   people, two-wheelers, poles, trees, 3 m to 80 m away) far to near as polygons. Every
   pixel holds a part (class, material, colour, depth), so the label map, the depth map
   and the picture come from the same geometry.
3. ``render.render_appearance`` turns parts into pixels: the base look (synthetic for
   GTA5 and SYNTHIA, photographic for the others), then the weather pass of the domain's
   condition from ``render.CONDITION_PASSES`` (clear, fog, night, rain, snow), then the
   camera (tint, blur, vignetting, noise).
4. ``captions.caption_for`` names the style, condition, visible stuff and objects, e.g.
   "a rendered street scene in daylight showing road, building and sky, with two cars".
5. ``miniature.render_sample`` makes one (image, trainIds, caption, layout);
   ``layouts.sample_files`` and ``layouts.write_label`` put it where, and in the format,
   the data set's class (``diffprompt.data.datasets``) reads it.

``ensure_miniature()`` generates the whole miniature (``generate``) into
``data/miniature`` (git-ignored) when ``is_current`` says it is missing or was made by
another generator version or other parameters (``ToyWorldConfig``); it writes into a
temporary folder and renames it into place, so an interrupted run leaves nothing
half-written. Command line: ``python -m diffprompt.data.toyworld [--root R] [--force]
[--seed S] [--scale X]``.
"""

from diffprompt.data.toyworld.captions import caption_for
from diffprompt.data.toyworld.domains import (
    CONDITION_WORDS,
    DOMAINS,
    CameraModel,
    CityModel,
    Domain,
    Look,
)
from diffprompt.data.toyworld.layouts import SampleFiles, sample_files, write_label
from diffprompt.data.toyworld.miniature import (
    DEFAULT_COUNTS,
    GENERATOR_VERSION,
    ToyWorldConfig,
    ensure_miniature,
    generate,
    is_current,
    main,
    render_sample,
    sample_seed,
)
from diffprompt.data.toyworld.render import CONDITION_PASSES, render_appearance
from diffprompt.data.toyworld.scene import build_layout
from diffprompt.data.toyworld.world import Camera, Layout, Light, Part, sample_camera

__all__ = [
    "CONDITION_PASSES",
    "CONDITION_WORDS",
    "DEFAULT_COUNTS",
    "DOMAINS",
    "GENERATOR_VERSION",
    "Camera",
    "CameraModel",
    "CityModel",
    "Domain",
    "Layout",
    "Light",
    "Look",
    "Part",
    "SampleFiles",
    "ToyWorldConfig",
    "build_layout",
    "caption_for",
    "ensure_miniature",
    "generate",
    "is_current",
    "main",
    "render_appearance",
    "render_sample",
    "sample_camera",
    "sample_files",
    "sample_seed",
    "write_label",
]
