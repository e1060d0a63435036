"""A street scene in world coordinates (metres; X right, Y up, Z forward), rendered to a
part map: ``build_layout`` draws the ground (road, lane paint, curbs, sidewalks, grass),
the facades on both sides (buildings with windows, walls, fences, hedges, gaps), the far
end of the street, the objects (``objects.draw_objects``) and the ego vehicle's hood.

The ground and the facades are rendered analytically per pixel with a depth test; every
pixel holds the id of a ``Part`` (its class, material, base colour and depth), so the
label map, the depth map and the picture all come from the same geometry.
"""

from __future__ import annotations

import numpy as np

from diffprompt.data.toyworld.domains import CityModel, Domain
from diffprompt.data.toyworld.objects import draw_objects
from diffprompt.data.toyworld.world import (
    BUILDING,
    FENCE,
    M_ASPHALT,
    M_CONCRETE,
    M_CURB,
    M_FACADE,
    M_FENCE,
    M_FOLIAGE,
    M_GLASS,
    M_GRASS,
    M_HOOD,
    M_PAINT,
    M_PAVING,
    M_SKY,
    ROAD,
    SIDEWALK,
    SKY,
    TERRAIN,
    VEG,
    VOID,
    WALL,
    Camera,
    Canvas,
    Layout,
    PartTable,
    Street,
    jitter_color,
    sample_range,
    sample_street,
)

#: One facade segment along a side of the street: (z start, z end, kind, height).
Segment = tuple[float, float, str, float]


def build_layout(rng: np.random.Generator, domain: Domain, cam: Camera) -> Layout:
    """Return the layout of one street of ``domain``'s city seen by ``cam``."""
    street = sample_street(rng, domain.city)
    parts = PartTable()
    sky = parts.add(SKY, M_SKY, (0.6, 0.75, 0.9), 1e4)
    canvas = Canvas.empty(cam.height, cam.width, sky)
    painter = StreetPainter(rng, cam, domain.city, street, parts, canvas)
    painter.ground()
    painter.facades()
    top_faces = draw_objects(rng, cam, domain, street, parts, canvas)
    if cam.hood > 0:
        painter.hood()
    return Layout(
        camera=cam,
        part=canvas.part,
        depth=canvas.depth,
        parts=parts.parts,
        lights=parts.lights,
        window_lit=canvas.window_lit,
        ground=canvas.ground,
        lane_dist=canvas.lane_dist,
        top_faces=top_faces,
    )


def side_segments(rng: np.random.Generator, city: CityModel) -> list[Segment]:
    """Return the facade segments of one side of the street, from z in [-10, 2) to 160 m:
    buildings (62 %), walls, fences, hedges and gaps."""
    segs = []
    z = rng.uniform(-10, 2)
    while z < 160:
        r = rng.random()
        length = sample_range(rng, city.building_length)
        if r < 0.62:
            kind, hgt = "building", sample_range(rng, city.building_height)
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


class StreetPainter:
    """Paints the ground, the facades and the hood of one street into a canvas."""

    def __init__(
        self,
        rng: np.random.Generator,
        cam: Camera,
        city: CityModel,
        street: Street,
        parts: PartTable,
        canvas: Canvas,
    ):
        self.rng, self.cam, self.city, self.street = rng, cam, city, street
        self.parts, self.canvas = parts, canvas
        h, w = canvas.part.shape
        self.v = np.arange(h, dtype=np.float32)[:, None] + 0.5  # (H, 1) row centres

    # -- ground: road, lane paint, curbs, sidewalks, grass ---------------------------
    def ground(self) -> None:
        """Paint the ground plane below the horizon (up to 400 m)."""
        cam, rng, st = self.cam, self.rng, self.street
        h, w = self.canvas.part.shape
        u = np.arange(w, dtype=np.float32)[None, :] + 0.5
        dv = self.v - cam.horizon
        below = dv > 0.35
        z = np.where(below, cam.f * cam.cam_h / np.maximum(dv, 1e-3), 1e4)  # (H, 1)
        x = (u - cam.cx) * z / cam.f  # (H, W)
        rel = x - st.road_xc
        a = np.abs(rel)
        side = (rel > 0).astype(np.int64)
        sw = np.where(side == 1, st.sidewalk[1], st.sidewalk[0])
        gr = np.where(side == 1, st.grass[1], st.grass[0])
        road = self.parts.add(ROAD, M_ASPHALT, (0.32, 0.32, 0.34), 0)
        paint = self.parts.add(ROAD, M_PAINT, (0.85, 0.85, 0.82), 0)
        curb = self.parts.add(SIDEWALK, M_CURB, (0.62, 0.6, 0.58), 0)
        walk = self.parts.add(SIDEWALK, M_PAVING, jitter_color(rng, (165, 155, 148)), 0)
        grass = self.parts.add(TERRAIN, M_GRASS, jitter_color(rng, (105, 135, 60)), 0)
        ids = np.full((h, w), grass, np.int32)
        ids[a < st.road_hw + sw + gr] = grass
        ids[a < st.road_hw + sw] = walk
        ids[a < st.road_hw + 0.3] = curb
        ids[a < st.road_hw] = road
        # lane paint: dashed lines between lanes, solid edge lines
        lines = -st.road_hw + st.lane_width * np.arange(1, st.lanes)
        on_road = a < st.road_hw
        for lx in lines:
            dash = (np.mod(z, 9.0) < 4.0) & (np.abs(rel - lx) < 0.09)
            ids[on_road & dash] = paint
        ids[on_road & (a > st.road_hw - 0.35) & (a < st.road_hw - 0.2)] = paint
        if rng.random() < 0.3:  # a zebra crossing
            zc = rng.uniform(8, 25)
            zebra = on_road & (z > zc) & (z < zc + 3.0) & (np.mod(rel, 1.0) < 0.5)
            ids[zebra] = paint
        centres = -st.road_hw + st.lane_width * (np.arange(st.lanes) + 0.5)
        ld = np.min(np.abs(rel[..., None] - centres), axis=-1)
        self.canvas.lane_dist[:] = np.where(on_road & below, ld, np.inf)
        keep = np.broadcast_to(below & (z < 400), (h, w))
        z = np.broadcast_to(z, (h, w))
        self.canvas.part[keep] = ids[keep]
        self.canvas.depth[keep] = z[keep]
        self.canvas.ground[keep] = True

    # -- facades: buildings, walls, fences, hedges, far end --------------------------
    def facades(self) -> None:
        """Paint both sides of the street, then (half of the time) a far cross facade."""
        for s, sign in enumerate((-1.0, 1.0)):
            self._side(s, sign)
        if self.rng.random() < 0.5:
            self._far_end()

    def _side(self, s: int, sign: float) -> None:
        """Paint the facade segments of side ``s`` (sign -1 left, +1 right)."""
        cam, st = self.cam, self.street
        w = self.canvas.part.shape[1]
        u = np.arange(w, dtype=np.float32) + 0.5
        xs = st.road_xc + sign * (st.road_hw + st.sidewalk[s] + st.grass[s])
        du = u - cam.cx
        valid = (np.sign(du) == np.sign(xs)) & (np.abs(du) > 0.5)
        zc = np.where(valid, cam.f * xs / np.where(valid, du, 1.0), -1.0)  # (W,) depth per column
        segs = side_segments(self.rng, self.city)
        starts = np.array([sg[0] for sg in segs])
        idx = np.clip(np.searchsorted(starts, zc, side="right") - 1, 0, len(segs) - 1)
        valid &= (zc > 0.8) & (zc < segs[-1][1])
        shade = 0.8 if sign < 0 else 0.65  # sun from the left-front
        for k, (_z0, _z1, kind, hgt) in enumerate(segs):
            cols = valid & (idx == k)
            if cols.any() and kind != "gap":
                self._segment(k, kind, hgt, zc[cols], cols, shade)

    def _segment(
        self, k: int, kind: str, hgt: float, zk: np.ndarray, cols: np.ndarray, shade: float
    ) -> None:
        """Paint segment ``k`` of a side in its columns ``cols`` (depths ``zk``)."""
        cam, rng, v = self.cam, self.rng, self.v
        if kind == "hedge":  # bumpy top
            hk = hgt * (1 + 0.25 * np.sin(zk * rng.uniform(0.5, 1.5) + rng.uniform(0, 9)))
        else:
            hk = np.full_like(zk, hgt)
        top = cam.horizon + cam.f * (cam.cam_h - hk) / zk
        bot = cam.horizon + cam.f * cam.cam_h / zk
        m = (v >= top[None]) & (v < bot[None]) & (zk[None] < self.canvas.depth[:, cols])
        depth = float(zk.mean())
        if kind == "building":
            ids = self._building(k, zk, hk, m, cols, shade)
        elif kind == "hedge":
            ids = self.parts.add(VEG, M_FOLIAGE, jitter_color(rng, (60, 85, 40)), depth, shade)
        else:  # walls and fences stand in front of greenery or sky
            if rng.random() < 0.6:
                self._greenery_behind(hgt, zk, top, cols, shade)
            if kind == "wall":
                color = jitter_color(rng, (150, 145, 135))
                ids = self.parts.add(WALL, M_CONCRETE, color, depth, shade)
            else:
                color = jitter_color(rng, (120, 110, 95))
                ids = self.parts.add(FENCE, M_FENCE, color, depth, shade)
        self._paint_columns(cols, m, np.broadcast_to(ids, m.shape), zk)

    def _building(
        self,
        k: int,
        zk: np.ndarray,
        hk: np.ndarray,
        m: np.ndarray,
        cols: np.ndarray,
        shade: float,
    ) -> np.ndarray:
        """Return the (H, n) part ids of a building facade: wall and a grid of windows
        (some lit at night, marked in ``window_lit``)."""
        cam, rng, v = self.cam, self.rng, self.v
        colors = self.city.facade_colors
        facade = jitter_color(rng, colors[rng.integers(len(colors))])
        pid = self.parts.add(BUILDING, M_FACADE, facade, float(zk.mean()), shade)
        glass = jitter_color(rng, (60, 70, 80))
        gid = self.parts.add(BUILDING, M_GLASS, glass, float(zk.mean()), shade)
        # windows on a grid in facade coordinates (Z along, Y up)
        yw = cam.cam_h - (v - cam.horizon) * zk[None] / cam.f
        pitch = rng.uniform(2.5, 4.0)
        floor = rng.uniform(2.8, 3.6)
        fz = np.mod(zk / pitch, 1.0)[None]
        fy = np.mod((yw - 1.0) / floor, 1.0)
        win = (fz > 0.25) & (fz < 0.75) & (fy > 0.3) & (fy < 0.8) & (yw > 2.5)
        win &= yw < hk[None] - 0.8
        cell = np.floor(zk / pitch)[None] * 131 + np.floor((yw - 1.0) / floor)
        lit = win & (np.mod(cell * 0.618 + k * 0.37, 1.0) < 0.2)
        self.canvas.window_lit[:, cols] |= m & lit
        return np.where(win, gid, pid)

    def _greenery_behind(
        self, hgt: float, zk: np.ndarray, top: np.ndarray, cols: np.ndarray, shade: float
    ) -> None:
        """Paint vegetation 1 m behind a wall or fence, rising 1-5 m above it."""
        cam, rng, v = self.cam, self.rng, self.v
        hb = hgt + rng.uniform(1.0, 5.0)
        topb = cam.horizon + cam.f * (cam.cam_h - hb) / zk
        mb = (v >= topb[None]) & (v < top[None]) & (zk[None] < self.canvas.depth[:, cols])
        color = jitter_color(rng, (55, 80, 35))
        vid = self.parts.add(VEG, M_FOLIAGE, color, float(zk.mean()) + 1, shade)
        h = self.canvas.part.shape[0]
        sub = self.canvas.part[:, cols]
        sub[mb] = vid
        self.canvas.part[:, cols] = sub
        dsub = self.canvas.depth[:, cols]
        dsub[mb] = (zk[None] + 1).repeat(h, 0)[mb]
        self.canvas.depth[:, cols] = dsub

    def _paint_columns(self, cols: np.ndarray, m: np.ndarray, ids: np.ndarray, zk: np.ndarray):
        """Write part ids ``ids`` and depths ``zk`` where ``m`` holds, in columns ``cols``."""
        sub = self.canvas.part[:, cols]
        sub[m] = ids[m]
        self.canvas.part[:, cols] = sub
        dsub = self.canvas.depth[:, cols]
        dsub[m] = np.broadcast_to(zk[None], m.shape)[m]
        self.canvas.depth[:, cols] = dsub

    def _far_end(self) -> None:
        """Paint a cross facade closing the street 60-150 m ahead."""
        cam, rng, v = self.cam, self.rng, self.v
        part, depth = self.canvas.part, self.canvas.depth
        zend = rng.uniform(60, 150)
        hgt = sample_range(rng, self.city.building_height)
        top = cam.horizon + cam.f * (cam.cam_h - hgt) / zend
        bot = cam.horizon + cam.f * cam.cam_h / zend
        colors = self.city.facade_colors
        col = jitter_color(rng, colors[rng.integers(len(colors))])
        pid = self.parts.add(BUILDING, M_FACADE, col, zend)
        m = (v >= top) & (v < bot) & (np.broadcast_to(zend, part.shape) < depth)
        part[m] = pid
        depth[m] = zend

    def hood(self) -> None:
        """Paint the ego vehicle's hood (void) over the bottom rows."""
        part, depth = self.canvas.part, self.canvas.depth
        h, w = part.shape
        rows = self.cam.hood * h
        u = (np.arange(w) + 0.5) / w - 0.5
        edge = h - rows * (1 - 0.8 * u**2)  # a gently curved bonnet edge
        m = np.arange(h)[:, None] + 0.5 > edge[None, :]
        pid = self.parts.add(VOID, M_HOOD, (0.1, 0.1, 0.11), 1.0)
        part[m] = pid
        depth[m] = 1.0
