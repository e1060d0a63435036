"""Objects standing on the ground: vehicles in lanes and at the kerb, trams, people on the
sidewalks (some crossing), cyclists and motorcyclists, parked two-wheelers, poles with
lamps, traffic lights and signs, and trees.

``place_objects`` samples where they stand (3 m to 80 m ahead, so each class appears at
several scales); ``draw_objects`` projects them far to near as polygons into the part
map, adding their parts (and their lights) to the scene's ``PartTable``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from diffprompt.data.toyworld.domains import CityModel, Domain
from diffprompt.data.toyworld.world import (
    BIKE,
    BUS,
    CAR,
    LIGHT,
    M_BARK,
    M_BODY,
    M_CLOTH,
    M_FOLIAGE,
    M_GLASS,
    M_LAMP,
    M_METAL,
    M_RUBBER,
    M_SIGN,
    M_SKIN,
    MOTO,
    PERSON,
    POLE,
    RIDER,
    SIGN,
    TRAIN,
    TRUCK,
    VEG,
    Camera,
    Canvas,
    Color,
    Light,
    PartTable,
    Street,
    jitter_color,
)

VEHICLE_COLORS = {
    "muted": (
        (30, 30, 35),
        (200, 200, 205),
        (150, 150, 155),
        (40, 50, 90),
        (120, 30, 30),
        (90, 90, 95),
        (230, 230, 230),
        (60, 70, 60),
    ),
    "bright": (
        (220, 30, 30),
        (250, 200, 30),
        (30, 90, 220),
        (40, 180, 60),
        (245, 245, 245),
        (240, 110, 20),
        (150, 40, 180),
        (20, 20, 20),
    ),
}
#: Body colours of the large vehicles (cars take the domain's ``VEHICLE_COLORS``).
BODY_COLORS = {
    "bus": ((40, 90, 170), (200, 40, 40), (230, 200, 40), (235, 235, 235)),
    "train": ((30, 80, 170), (235, 235, 235), (200, 50, 40)),
    "truck": ((220, 220, 215), (90, 100, 120), (170, 60, 40), (230, 180, 40)),
}
#: (width, height, length) in metres of each vehicle kind, and (below) its trainId.
VEHICLE_SIZES = {
    "car": (1.8, 1.45, 4.3),
    "truck": (2.5, 3.3, 7.5),
    "bus": (2.55, 3.1, 11.0),
    "train": (2.6, 3.6, 26.0),
}
VEHICLE_CLASSES = {"car": CAR, "truck": TRUCK, "bus": BUS, "train": TRAIN}
FRAME_COLORS = ((30, 30, 30), (180, 30, 30), (40, 70, 150), (200, 200, 200))
CLOTH_COLORS = (
    (30, 30, 40),
    (60, 60, 70),
    (120, 30, 40),
    (40, 60, 110),
    (160, 150, 140),
    (90, 70, 50),
    (200, 60, 40),
    (40, 110, 60),
)
SKIN_COLORS = ((240, 200, 170), (200, 150, 110), (140, 95, 65), (90, 60, 40))
GLASS = (0.12, 0.14, 0.17)
RUBBER = (0.05, 0.05, 0.05)
#: Traffic light lamps, top to bottom (the lit one at full colour, the others dimmed).
SIGNAL_COLORS = ((1.0, 0.1, 0.05), (1.0, 0.7, 0.05), (0.1, 1.0, 0.3))
SIGN_FACES = ((0.85, 0.1, 0.1), (0.1, 0.3, 0.8), (0.95, 0.8, 0.1))  # round, square, triangle


@dataclass
class Placed:
    """One object to draw: its depth (the draw order), kind and drawing arguments."""

    depth: float  # metres ahead
    kind: str  # vehicle | person | twowheeler | pole | tree
    args: dict[str, Any] = field(default_factory=dict)


def place_objects(rng: np.random.Generator, street: Street, city: CityModel) -> list[Placed]:
    """Return the objects of one street, in sampling order (not yet sorted by depth)."""
    return [
        *_place_vehicles(rng, street, city),
        *_place_people(rng, street),
        *_place_two_wheelers(rng, street),
        *_place_kerb_objects(rng, street, city),
    ]


def _place_vehicles(rng: np.random.Generator, st: Street, city: CityModel) -> list[Placed]:
    """Return vehicles in the lanes (some oncoming), cars parked at the kerb, maybe a tram."""
    out = []
    for _ in range(rng.integers(2, 9)):
        lane = rng.integers(st.lanes)
        x = st.road_xc - st.road_hw + st.lane_width * (lane + 0.5) + rng.uniform(-0.3, 0.3)
        z = rng.uniform(4.5, 60)
        r = rng.random()
        kind = "car" if r < 0.72 else ("truck" if r < 0.86 else "bus")
        oncoming = x < st.road_xc - 0.5 and rng.random() < 0.7
        out.append(Placed(z, "vehicle", dict(x=x, kind=kind, oncoming=oncoming)))
    for sign in (-1, 1):
        if rng.random() < 0.5:
            for _ in range(rng.integers(1, 4)):
                x = st.road_xc + sign * (st.road_hw - 1.1)
                z = rng.uniform(5, 45)
                out.append(Placed(z, "vehicle", dict(x=x, kind="car", oncoming=False)))
    if rng.random() < city.tram_prob:
        z = rng.uniform(8, 45)
        x = st.road_xc + rng.uniform(-0.5, 0.5)
        out.append(Placed(z, "vehicle", dict(x=x, kind="train", oncoming=False)))
    return out


def _place_people(rng: np.random.Generator, st: Street) -> list[Placed]:
    """Return people on the sidewalks, 15 % of them crossing the road."""
    out = []
    for _ in range(rng.integers(1, 8)):
        s = rng.integers(2)
        sign = -1 if s == 0 else 1
        x = st.road_xc + sign * (st.road_hw + rng.uniform(0.4, st.sidewalk[s] - 0.3))
        if rng.random() < 0.15:
            x = st.road_xc + rng.uniform(-st.road_hw, st.road_hw)
        out.append(Placed(rng.uniform(3.5, 40), "person", dict(x=x)))
    return out


def _place_two_wheelers(rng: np.random.Generator, st: Street) -> list[Placed]:
    """Return cyclists and motorcyclists near the kerb, and parked bicycles/motorcycles."""
    out = []
    for _ in range(rng.integers(1, 4)):
        sign = rng.choice([-1, 1])
        x = st.road_xc + sign * (st.road_hw - rng.uniform(0.6, 1.5))
        z = rng.uniform(4, 35)
        out.append(Placed(z, "twowheeler", dict(x=x, motor=rng.random() < 0.4, rider=True)))
    for _ in range(rng.integers(0, 3)):
        s = rng.integers(2)
        sign = -1 if s == 0 else 1
        x = st.road_xc + sign * (st.road_hw + rng.uniform(0.5, st.sidewalk[s]))
        z = rng.uniform(4, 25)
        out.append(Placed(z, "twowheeler", dict(x=x, motor=rng.random() < 0.3, rider=False)))
    return out


def _place_kerb_objects(rng: np.random.Generator, st: Street, city: CityModel) -> list[Placed]:
    """Return poles (lamps, traffic lights, signs) along both kerbs and rows of trees."""
    out = []
    for s, sign in enumerate((-1, 1)):
        x = st.road_xc + sign * (st.road_hw + 0.5)
        z = rng.uniform(3, 15)
        while z < 80:
            r = rng.random()
            kind = "lamp" if r < 0.4 else ("light" if r < 0.65 else "sign")
            out.append(Placed(z, "pole", dict(x=x, kind=kind, sign=sign)))
            z += rng.uniform(10, 30)
        if rng.random() < city.tree_prob:
            xt = st.road_xc + sign * (st.road_hw + st.sidewalk[s] * rng.uniform(0.5, 0.9))
            z = rng.uniform(4, 14)
            while z < 70:
                out.append(Placed(z, "tree", dict(x=xt)))
                z += rng.uniform(7, 16)
    return out


def draw_objects(
    rng: np.random.Generator,
    cam: Camera,
    domain: Domain,
    street: Street,
    parts: PartTable,
    canvas: Canvas,
) -> np.ndarray:
    """Place the objects of ``street``, draw them far to near over ``canvas`` and return
    the (H, W) bool mask of their visible upward faces (roofs)."""
    objs = place_objects(rng, street, domain.city)
    objs.sort(key=lambda o: -o.depth)
    h, w = canvas.part.shape
    img = Image.new("I", (w, h), 0)  # part ids
    top_img = Image.new("L", (w, h), 0)  # roofs
    palette = VEHICLE_COLORS[domain.look.vehicle_palette]
    drawer = ObjectDrawer(rng, cam, parts, ImageDraw.Draw(img), ImageDraw.Draw(top_img), palette)
    draw = {
        "vehicle": drawer.vehicle,
        "person": drawer.person,
        "twowheeler": drawer.two_wheeler,
        "pole": drawer.pole,
        "tree": drawer.tree,
    }
    for o in objs:
        draw[o.kind](z=o.depth, **o.args)
    obj = np.asarray(img, dtype=np.int32)
    m = obj > 0
    canvas.part[m] = obj[m]
    dep = np.array([p.depth for p in parts.parts], np.float32)
    canvas.depth[m] = dep[obj[m]]
    return (np.asarray(top_img) > 0) & m


@dataclass
class Vehicle:
    """A vehicle's box in world coordinates and what its parts share."""

    kind: str
    cls: int  # trainId
    instance: int
    color: Color
    x0: float  # left and right faces
    x1: float
    z0: float  # rear face (towards the camera)
    length: float
    height: float

    @property
    def z1(self) -> float:
        """Return the depth of the front face."""
        return self.z0 + self.length


class ObjectDrawer:
    """Draws objects as projected polygons into a part-id image (and roofs into a mask)."""

    def __init__(
        self,
        rng: np.random.Generator,
        cam: Camera,
        parts: PartTable,
        draw: ImageDraw.ImageDraw,
        top_draw: ImageDraw.ImageDraw,
        vehicle_palette: tuple[tuple[int, int, int], ...],
    ):
        self.rng, self.cam, self.parts = rng, cam, parts
        self.draw, self.top_draw = draw, top_draw  # part ids; roofs
        self.vehicle_palette = vehicle_palette  # car colours

    # -- primitives --------------------------------------------------------------------
    def _poly(
        self,
        pts3d: list[tuple[float, float, float]],
        pid: int,
        draw: ImageDraw.ImageDraw | None = None,
    ) -> None:
        """Fill the projected polygon of world points ``pts3d`` with ``pid``."""
        pts = [self.cam.project(*p) for p in pts3d]
        (self.draw if draw is None else draw).polygon(pts, fill=pid)

    def _rect(self, x0: float, x1: float, y0: float, y1: float, z: float, pid: int) -> None:
        """Fill an upright rectangle facing the camera at depth z."""
        self._poly([(x0, y0, z), (x1, y0, z), (x1, y1, z), (x0, y1, z)], pid)

    def _ellipse(
        self, top_left: tuple[float, float], bottom_right: tuple[float, float], z: float, **style
    ) -> None:
        """Draw the ellipse in the world box (x, y) ``top_left``..``bottom_right`` at depth
        z, at least one pixel wide and high; ``style`` as ImageDraw.ellipse's."""
        u0, v0 = self.cam.project(*top_left, z)
        u1, v1 = self.cam.project(*bottom_right, z)
        self.draw.ellipse([u0, v0, max(u1, u0 + 1), max(v1, v0 + 1)], **style)

    # -- vehicles ----------------------------------------------------------------------
    def vehicle(self, x: float, z: float, kind: str, oncoming: bool) -> None:
        """Draw a car, truck, bus or tram whose rear face is at depth ``z``."""
        rng = self.rng
        wd, ht, ln = VEHICLE_SIZES[kind]
        wd *= rng.uniform(0.92, 1.08)
        ht *= rng.uniform(0.92, 1.08)
        inst = self.parts.new_instance()
        if kind == "car":
            palette = self.vehicle_palette
            col = jitter_color(rng, palette[rng.integers(len(palette))], 0.05)
        else:
            colors = BODY_COLORS[kind]
            col = jitter_color(rng, colors[rng.integers(len(colors))])
        v = Vehicle(kind, VEHICLE_CLASSES[kind], inst, col, x - wd / 2, x + wd / 2, z, ln, ht)
        # top face (seen from a high camera), then the side facing the camera, then rear
        if ht < self.cam.cam_h - 0.2:
            self._vehicle_roof(v)
        if v.x1 < -0.3 or v.x0 > 0.3:
            self._vehicle_side(v)
        self._vehicle_rear(v, x)
        self._vehicle_lamps(v, oncoming)

    def _vpart(
        self,
        v: Vehicle,
        material: int,
        color: Color,
        shade: float = 1.0,
        depth: float | None = None,
    ) -> int:
        """Add a part of vehicle ``v`` (at its rear depth unless ``depth``); return its id."""
        depth = v.z0 if depth is None else depth
        return self.parts.add(v.cls, material, color, depth, shade, v.kind, v.instance)

    def _vehicle_roof(self, v: Vehicle) -> None:
        """Draw the roof (seen from a camera higher than the vehicle), also as a top face."""
        roof = self._vpart(v, M_BODY, v.color, 1.15)
        car = v.kind == "car"
        xa, xb = (v.x0 + 0.25, v.x1 - 0.25) if car else (v.x0, v.x1)
        za, zb = (v.z0 + 1.0, v.z1 - 1.3) if car else (v.z0, v.z1)
        ht = v.height
        pts = [(xa, ht, za), (xb, ht, za), (xb, ht, zb), (xa, ht, zb)]
        self._poly(pts, roof)
        self._poly(pts, 255, draw=self.top_draw)

    def _vehicle_side(self, v: Vehicle) -> None:
        """Draw the side facing the camera: body, windows, a truck's cab, wheels."""
        z0, z1, ht, mid = v.z0, v.z1, v.height, v.z0 + v.length / 2
        xs = v.x1 if v.x1 < 0 else v.x0
        side = self._vpart(v, M_BODY, v.color, 0.72, mid)
        self._poly([(xs, 0.3, z0), (xs, 0.3, z1), (xs, ht, z1), (xs, ht, z0)], side)
        if v.kind in ("bus", "train", "car"):
            wlo, whi = (0.95, ht - 0.08) if v.kind == "car" else (1.3, ht - 0.5)
            sg = self._vpart(v, M_GLASS, GLASS, 0.8, mid)
            za, zb = (z0 + 1.0, z1 - 1.2) if v.kind == "car" else (z0 + 0.4, z1 - 0.4)
            self._poly([(xs, wlo, za), (xs, wlo, zb), (xs, whi, zb), (xs, whi, za)], sg)
        if v.kind == "truck":  # cab at the front, lower than the box
            cab = self._vpart(v, M_BODY, jitter_color(self.rng, (200, 200, 200)), 0.72, z1)
            cab_face = [(xs, 0.3, z1 - 0.2), (xs, 0.3, z1 + 2.0), (xs, 2.6, z1 + 2.0)]
            self._poly([*cab_face, (xs, 2.6, z1 - 0.2)], cab)
        wheel = self._vpart(v, M_RUBBER, RUBBER, 1.0, mid)
        for zw in (z0 + 0.8, z1 - 0.9) if v.kind != "train" else ():
            lo, hi = zw - 0.35, zw + 0.35
            self._poly([(xs, 0.0, lo), (xs, 0.0, hi), (xs, 0.65, hi), (xs, 0.65, lo)], wheel)

    def _vehicle_rear(self, v: Vehicle, x: float) -> None:
        """Draw the rear face: body (a car's narrower cabin), window or doors, tyres."""
        x0, x1, z0, ht = v.x0, v.x1, v.z0, v.height
        body = self._vpart(v, M_BODY, v.color)
        if v.kind == "car":  # lower body + narrower cabin
            self._rect(x0, x1, 0.3, ht * 0.58, z0, body)
            sill, roof = ht * 0.58, ht
            cabin = [(x0 + 0.05, sill, z0 + 0.3), (x1 - 0.05, sill, z0 + 0.3)]
            self._poly([*cabin, (x1 - 0.22, roof, z0 + 0.9), (x0 + 0.22, roof, z0 + 0.9)], body)
            win = self._vpart(v, M_GLASS, GLASS)
            lo, hi = ht * 0.62, ht * 0.95
            pane = [(x0 + 0.15, lo, z0 + 0.35), (x1 - 0.15, lo, z0 + 0.35)]
            self._poly([*pane, (x1 - 0.28, hi, z0 + 0.85), (x0 + 0.28, hi, z0 + 0.85)], win)
        else:
            self._rect(x0, x1, 0.3, ht, z0, body)
            if v.kind in ("bus", "train"):
                win = self._vpart(v, M_GLASS, GLASS)
                self._rect(x0 + 0.15, x1 - 0.15, ht * 0.5, ht * 0.9, z0, win)
            else:  # box doors
                seam = self._vpart(v, M_METAL, tuple(c * 0.7 for c in v.color))
                self._rect(x - 0.03, x + 0.03, 0.5, ht - 0.1, z0, seam)
        tyre = self._vpart(v, M_RUBBER, RUBBER)
        self._rect(x0 + 0.1, x0 + 0.45, 0.0, 0.35, z0 + 0.3, tyre)
        self._rect(x1 - 0.45, x1 - 0.1, 0.0, 0.35, z0 + 0.3, tyre)

    def _vehicle_lamps(self, v: Vehicle, oncoming: bool) -> None:
        """Draw head lights (oncoming) or tail lights, each also a point light."""
        lamp_c = (1.0, 0.95, 0.8) if oncoming else (0.8, 0.05, 0.05)
        lamp = self._vpart(v, M_LAMP, lamp_c)
        yl = 0.75 if v.kind == "car" else 0.9
        radius = 0.6 if oncoming else 0.3
        strength = 1.0 if oncoming else 0.6
        for xl in (v.x0 + 0.12, v.x1 - 0.32):
            self._rect(xl, xl + 0.2, yl, yl + 0.15, v.z0 - 0.01, lamp)
            u, w = self.cam.project(xl + 0.1, yl + 0.07, v.z0)
            self.parts.lights.append(Light(u, w, self.cam.f * radius / v.z0, lamp_c, strength))

    # -- people ------------------------------------------------------------------------
    def person(self, x: float, z: float) -> None:
        """Draw a pedestrian (legs in a random stride, torso, arms, head) at depth z."""
        p_top, p_bot, p_skin, s = self._person_parts(z, PERSON, "person")
        stride = self.rng.uniform(-0.15, 0.15)
        hip = 0.85 * s
        left_hip = [(x - 0.16 * s, hip, z), (x - 0.02 * s, hip, z)]
        self._poly([*left_hip, (x - 0.05 * s + stride, 0, z), (x - 0.17 * s + stride, 0, z)], p_bot)
        right_hip = [(x + 0.02 * s, hip, z), (x + 0.16 * s, hip, z)]
        self._poly(
            [*right_hip, (x + 0.17 * s - stride, 0, z), (x + 0.05 * s - stride, 0, z)], p_bot
        )
        waist, shoulders = 0.82 * s, 1.45 * s
        torso = [(x - 0.22 * s, waist, z), (x + 0.22 * s, waist, z)]
        self._poly([*torso, (x + 0.2 * s, shoulders, z), (x - 0.2 * s, shoulders, z)], p_top)
        for sx in (-1, 1):  # arms
            arm_top = [(x + sx * 0.2 * s, 1.42 * s, z), (x + sx * 0.28 * s, 1.4 * s, z)]
            hand = [(x + sx * 0.3 * s, 0.85 * s, z), (x + sx * 0.22 * s, 0.85 * s, z)]
            self._poly(arm_top + hand, p_top)
        self._head(x, 1.6 * s, 0.12 * s, z, p_skin)

    def rider(self, x: float, z: float, y0: float) -> None:
        """Draw a rider seated ``y0`` above the ground, leaning forward, seen from the side."""
        p_top, p_bot, p_skin, s = self._person_parts(z, RIDER, "rider")
        seat, chest = y0 + 0.75 * s, y0 + 1.35 * s
        back = [(x - 0.15 * s, seat, z), (x + 0.1 * s, seat, z)]
        self._poly([*back, (x + 0.35 * s, chest, z), (x + 0.1 * s, y0 + 1.4 * s, z)], p_top)
        thigh = [(x - 0.15 * s, y0 + 0.8 * s, z), (x + 0.05 * s, y0 + 0.8 * s, z)]
        shin = [(x + 0.25 * s, y0 + 0.2 * s, z), (x + 0.1 * s, y0 + 0.15 * s, z)]
        self._poly(thigh + shin, p_bot)
        self._head(x + 0.3 * s, y0 + 1.5 * s, 0.12 * s, z, p_skin)

    def _person_parts(self, z: float, cls: int, kind: str) -> tuple[int, int, int, float]:
        """Return the (top, bottom, skin) part ids of a new person and its size factor."""
        rng = self.rng
        inst = self.parts.new_instance()
        hgt = rng.uniform(1.6, 1.9)
        top = jitter_color(rng, CLOTH_COLORS[rng.integers(len(CLOTH_COLORS))], 0.1)
        bottom = jitter_color(rng, CLOTH_COLORS[rng.integers(len(CLOTH_COLORS))], 0.1)
        skin = jitter_color(rng, SKIN_COLORS[rng.integers(len(SKIN_COLORS))], 0.05)
        p_top = self.parts.add(cls, M_CLOTH, top, z, 1.0, kind, inst)
        p_bot = self.parts.add(cls, M_CLOTH, bottom, z, 1.0, kind, inst)
        p_skin = self.parts.add(cls, M_SKIN, skin, z, 1.0, kind, inst)
        return p_top, p_bot, p_skin, hgt / 1.75

    def _head(self, hx: float, hy: float, r: float, z: float, pid: int) -> None:
        """Draw a round head of radius ``r`` centred at (hx, hy)."""
        self._ellipse((hx - r, hy + r), (hx + r, hy - r), z, fill=pid)

    # -- two-wheelers ------------------------------------------------------------------
    def two_wheeler(self, x: float, z: float, motor: bool, rider: bool) -> None:
        """Draw a bicycle (wire frame) or a motorcycle, with its rider when ``rider``."""
        rng = self.rng
        kind = "motorcycle" if motor else "bicycle"
        cls = MOTO if motor else BIKE
        inst = self.parts.new_instance()
        frame_c = jitter_color(rng, FRAME_COLORS[rng.integers(len(FRAME_COLORS))])
        pid = self.parts.add(cls, M_METAL, frame_c, z, 1.0, kind, inst)
        tyre = self.parts.add(cls, M_RUBBER, (0.06, 0.06, 0.06), z, 1.0, kind, inst)
        d = rng.choice([-1, 1])  # facing left or right
        r = 0.32 if motor else 0.34
        half = 0.65 if motor else 0.55
        lw = max(1, round(0.1 * (self.cam.f / z)))  # line width, pixels
        for xc in (x - half, x + half):
            style = dict(fill=tyre) if motor else dict(outline=tyre, width=lw)
            self._ellipse((xc - r, 2 * r), (xc + r, 0.0), z, **style)
        if motor:
            body = [(x - half, r, z), (x + half, r, z)]
            self._poly([*body, (x + half * 0.8 * d, 0.95, z), (x - half * 0.6 * d, 0.85, z)], pid)
        else:
            saddle, bar = (x - half * 0.1 * d, 0.85), (x + half * 0.6 * d, 0.85)
            rear, crank, front = (x - half, r), (x, r), (x + half, r)
            frame = [rear, crank, bar, saddle, rear, front, bar]
            self.draw.line([self.cam.project(px, py, z) for px, py in frame], fill=pid, width=lw)
        if rider:  # the person on it is a "rider" (the Cityscapes class word)
            self.rider(x - 0.1 * d, z - 0.01, y0=0.2)

    # -- poles and trees ---------------------------------------------------------------
    def pole(self, x: float, z: float, kind: str, sign: int) -> None:
        """Draw a pole at the kerb carrying a lamp, a traffic light or a sign."""
        rng = self.rng
        inst = self.parts.new_instance()
        metal = jitter_color(rng, (110, 112, 115))
        hgt = rng.uniform(5.0, 8.0) if kind != "sign" else rng.uniform(2.6, 3.4)
        pid = self.parts.add(POLE, M_METAL, metal, z, 1.0, "pole", inst)
        pw = 0.09
        u0, _ = self.cam.project(x - pw, 0, z)
        u1, _ = self.cam.project(x + pw, 0, z)
        if u1 - u0 < 1:  # keep thin poles at least one pixel wide
            self._poly([(x, 0, z), (x, hgt, z)], pid)
            _, vt = self.cam.project(x, hgt, z)
            _, vb = self.cam.project(x, 0, z)
            self.draw.line([(u0, vt), (u0, vb)], fill=pid, width=1)
        else:
            self._rect(x - pw, x + pw, 0, hgt, z, pid)
        if kind == "lamp":
            self._lamp(x, z, hgt, sign, pid, inst)
        elif kind == "light":
            self._traffic_light(x, z, hgt)
        else:
            self._sign(x, z, hgt)

    def _lamp(self, x: float, z: float, hgt: float, sign: int, pid: int, inst: int) -> None:
        """Draw an arm over the road with a lamp head (a point light that lights a pool)."""
        arm = x - sign * 1.8
        self._rect(min(x, arm), max(x, arm), hgt - 0.15, hgt, z, pid)
        head = self.parts.add(POLE, M_LAMP, (0.9, 0.9, 0.85), z, 1.0, "pole", inst)
        self._rect(arm - 0.3, arm + 0.3, hgt - 0.3, hgt - 0.1, z - 0.01, head)
        u, v = self.cam.project(arm, hgt - 0.3, z)
        self.parts.lights.append(Light(u, v, self.cam.f * 1.2 / z, (1.0, 0.85, 0.6), 1.0, True))

    def _traffic_light(self, x: float, z: float, hgt: float) -> None:
        """Draw a traffic light box with three lamps, one of them lit."""
        rng = self.rng
        inst = self.parts.new_instance()
        box_c = (0.12, 0.12, 0.1)
        box = self.parts.add(LIGHT, M_METAL, box_c, z - 0.02, 1.0, "traffic light", inst)
        yl = hgt - rng.uniform(0.0, 1.5)
        self._rect(x - 0.25, x + 0.25, yl - 1.2, yl, z - 0.02, box)
        state = rng.integers(3)
        for i, color in enumerate(SIGNAL_COLORS):
            lit = i == state
            c = color if lit else tuple(0.25 * k for k in color)
            material = M_LAMP if lit else M_METAL
            lp = self.parts.add(LIGHT, material, c, z - 0.03, 1.0, "traffic light", inst)
            yc = yl - 0.22 - 0.38 * i
            self._rect(x - 0.14, x + 0.14, yc - 0.14, yc + 0.14, z - 0.03, lp)
            if lit:
                u, v = self.cam.project(x, yc, z)
                self.parts.lights.append(Light(u, v, self.cam.f * 0.4 / z, c, 0.8))

    def _sign(self, x: float, z: float, hgt: float) -> None:
        """Draw a round, square or triangular traffic sign at the top of a pole."""
        inst = self.parts.new_instance()
        shape = self.rng.integers(3)
        zs = z - 0.02
        sp = self.parts.add(SIGN, M_SIGN, SIGN_FACES[shape], zs, 1.0, "traffic sign", inst)
        yc, r = hgt - 0.35, 0.33
        if shape == 0:
            self._ellipse((x - r, yc + r), (x + r, yc - r), zs, fill=sp)
        elif shape == 1:
            self._rect(x - r, x + r, yc - r * 0.8, yc + r * 0.8, zs, sp)
        else:
            self._poly([(x - r, yc + r * 0.6, zs), (x + r, yc + r * 0.6, zs), (x, yc - r, zs)], sp)

    def tree(self, x: float, z: float) -> None:
        """Draw a tree: a trunk and 2-4 elliptic crowns."""
        rng = self.rng
        inst = self.parts.new_instance()
        bark_c = jitter_color(rng, (80, 65, 50))
        bark = self.parts.add(VEG, M_BARK, bark_c, z, 1.0, "tree", inst)
        leaf_c = jitter_color(rng, (60, 95, 40), 0.15)
        leaf = self.parts.add(VEG, M_FOLIAGE, leaf_c, z, 1.0, "tree", inst)
        th = rng.uniform(2.0, 3.5)
        self._rect(x - 0.15, x + 0.15, 0, th + 0.5, z, bark)
        for _ in range(rng.integers(2, 5)):
            cx, cy = x + rng.uniform(-1.0, 1.0), th + rng.uniform(0.8, 2.5)
            rx, ry = rng.uniform(1.0, 2.2), rng.uniform(1.0, 2.0)
            self._ellipse((cx - rx, cy + ry), (cx + rx, cy - ry), z, fill=leaf)
