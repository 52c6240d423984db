"""Procedural scenes for dense multi-task learning: images with exact labels, depth, normals.

Every dense method can be trained and compared in minutes on a CPU with these. A scene is a
few simple objects (spheres, boxes turned about the vertical, upright cylinders) standing on a
ground plane under the sky, seen by a pinhole camera placed at random around them, lit by an
ambient term and one directional light that casts shadows, with random colours and procedural
textures (checkers on the ground, stripes on the objects). Each image is ray cast exactly, so
its targets carry no labelling noise:

* ``semantic``: class per pixel, ``0`` sky, ``1`` ground (a 16 m square floor),
  ``2`` sphere, ``3`` box, ``4`` cylinder (:data:`CLASSES`);
* ``depth``: distance along the camera's viewing axis (metres); ``0`` where invalid (sky);
* ``normal``: unit surface normal in camera coordinates (x right, y up, z towards the
  camera, as NYUv2's normals); ``(0, 0, 0)`` where invalid (sky);
* ``edge``: ``1`` on the boundary between two objects (or an object and the ground or sky),
  from the instance map with 4-neighbourhood.

Rendering is vectorised over the pixels with NumPy in float64, deterministic for a seed, and
the outputs are float32 (image, depth, normal, edge) and int64 (semantic).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASSES = ("sky", "ground", "sphere", "box", "cylinder")
_FAR = np.inf
FLOOR_HALF_SIZE = 8.0  # metres: the ground is a square floor, sky beyond it


@dataclass(frozen=True)
class Scene:
    """One rendered scene: ``image`` (3, H, W) in [0, 1], the four dense targets, and the
    camera's ``tan_half_fov`` (its intrinsics: pixel ``(u, v)`` at depth ``z`` lies at
    ``(x_ndc z tan, y_ndc z tan, -z)`` in camera coordinates)."""

    image: np.ndarray
    semantic: np.ndarray
    depth: np.ndarray
    normal: np.ndarray
    edge: np.ndarray
    tan_half_fov: float


@dataclass(frozen=True)
class Camera:
    position: np.ndarray
    forward: np.ndarray
    right: np.ndarray
    up: np.ndarray
    tan_half_fov: float

    @classmethod
    def look_at(cls, position: np.ndarray, target: np.ndarray, fov_deg: float) -> Camera:
        forward = target - position
        forward = forward / np.linalg.norm(forward)
        right = np.cross(forward, np.array([0.0, 1.0, 0.0]))
        right = right / np.linalg.norm(right)
        up = np.cross(right, forward)
        return cls(position, forward, right, up, float(np.tan(np.radians(fov_deg) / 2)))

    def rays(self, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unit ray directions (H*W, 3) and each pixel's normalised image coordinates."""
        centres = (np.arange(size) + 0.5) / size
        x_ndc = np.tile(2 * centres - 1, size)
        y_ndc = np.repeat(1 - 2 * centres, size)
        d = (self.forward[None] + (x_ndc * self.tan_half_fov)[:, None] * self.right[None]
             + (y_ndc * self.tan_half_fov)[:, None] * self.up[None])
        return d / np.linalg.norm(d, axis=1, keepdims=True), x_ndc, y_ndc

    def to_camera(self, vectors: np.ndarray) -> np.ndarray:
        """World vectors (N, 3) in camera coordinates (x right, y up, z towards the camera)."""
        return np.stack([vectors @ self.right, vectors @ self.up, -(vectors @ self.forward)], 1)


def _sphere(o, d, centre, radius):
    oc = o - centre
    b = d @ oc
    disc = b * b - (oc @ oc - radius * radius)
    t = np.where(disc > 0, -b - np.sqrt(np.maximum(disc, 0)), _FAR)
    t = np.where(t > 1e-6, t, _FAR)
    p = o + t[:, None] * d
    return t, (p - centre) / radius


def _box(o, d, centre, half, angle):
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])  # local -> world
    lo = (o - centre) @ rot
    ld = d @ rot
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(np.abs(ld) > 1e-12, 1.0 / ld, 1e12)
    t1, t2 = (-half - lo) * inv, (half - lo) * inv
    tnear, tfar = np.minimum(t1, t2), np.maximum(t1, t2)
    tmin, tmax = tnear.max(1), tfar.min(1)
    hit = (tmax >= tmin) & (tmin > 1e-6)
    axis = tnear.argmax(1)
    normal_local = np.zeros_like(ld)
    rows = np.arange(len(ld))
    normal_local[rows, axis] = -np.sign(ld[rows, axis])
    return np.where(hit, tmin, _FAR), normal_local @ rot.T


def _cylinder(o, d, base, radius, height):
    ox, oz = o[0] - base[0], o[2] - base[2]
    a = d[:, 0] ** 2 + d[:, 2] ** 2
    b = 2 * (ox * d[:, 0] + oz * d[:, 2])
    disc = b * b - 4 * a * (ox * ox + oz * oz - radius * radius)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_side = np.where(disc > 0, (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a), _FAR)
        y = o[1] + t_side * d[:, 1]
        t_side = np.where((t_side > 1e-6) & (y >= 0) & (y <= height), t_side, _FAR)
        t_cap = np.where(np.abs(d[:, 1]) > 1e-12, (height - o[1]) / d[:, 1], _FAR)
    px, pz = ox + t_cap * d[:, 0], oz + t_cap * d[:, 2]
    t_cap = np.where((t_cap > 1e-6) & (px * px + pz * pz <= radius * radius), t_cap, _FAR)
    side = t_side <= t_cap
    t = np.minimum(t_side, t_cap)
    p = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    n_side = np.stack([(p[:, 0] - base[0]) / radius, np.zeros(len(d)),
                       (p[:, 2] - base[2]) / radius], 1)
    n_cap = np.tile(np.array([0.0, 1.0, 0.0]), (len(d), 1))
    return t, np.where(side[:, None], n_side, n_cap)


def _objects(rng: np.random.Generator) -> list[tuple[int, tuple]]:
    """2 to 5 objects on the ground within 2.2 m of the origin: (class, geometry)."""
    found: list[tuple[int, tuple]] = []
    for _ in range(int(rng.integers(2, 6))):
        kind = int(rng.integers(2, 5))
        x, z = rng.uniform(-2.0, 2.0, size=2)
        if kind == 2:
            r = rng.uniform(0.3, 0.7)
            found.append((kind, (np.array([x, r, z]), r)))
        elif kind == 3:
            half = rng.uniform(0.2, 0.6, size=3)
            found.append((kind, (np.array([x, half[1], z]), half, rng.uniform(0, np.pi))))
        else:
            found.append((kind, (np.array([x, 0.0, z]), rng.uniform(0.2, 0.5),
                                 rng.uniform(0.4, 1.2))))
    return found


def _intersect(kind: int, geometry: tuple, o: np.ndarray, d: np.ndarray):
    if kind == 2:
        return _sphere(o, d, *geometry)
    if kind == 3:
        return _box(o, d, *geometry)
    return _cylinder(o, d, *geometry)


def render_scene(seed: int, size: int = 64) -> Scene:
    """Render scene number ``seed`` at ``size`` x ``size`` pixels (deterministic)."""
    if size < 8:
        raise ValueError(f"render_scene: size must be >= 8, got {size}")
    rng = np.random.default_rng(seed)
    objects = _objects(rng)
    azimuth, dist, height = rng.uniform(0, 2 * np.pi), rng.uniform(4.5, 6.0), rng.uniform(1.5, 3)
    camera = Camera.look_at(np.array([dist * np.cos(azimuth), height, dist * np.sin(azimuth)]),
                            np.array([rng.uniform(-0.5, 0.5), 0.3, rng.uniform(-0.5, 0.5)]),
                            fov_deg=rng.uniform(50, 70))
    d, _, _ = camera.rays(size)
    o = camera.position
    n_pix = len(d)
    t = np.full(n_pix, _FAR)
    normal = np.zeros((n_pix, 3))
    semantic = np.zeros(n_pix, dtype=np.int64)
    instance = np.zeros(n_pix, dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = np.where(d[:, 1] < -1e-9, -o[1] / d[:, 1], _FAR)
    on_floor = np.abs(o[None, [0, 2]] + np.where(np.isfinite(t_ground), t_ground, 0)[:, None]
                      * d[:, [0, 2]]).max(1) <= FLOOR_HALF_SIZE
    t_ground = np.where(on_floor, t_ground, _FAR)  # a bounded floor keeps depths in range
    hit = t_ground < t
    t, semantic, instance = np.where(hit, t_ground, t), np.where(hit, 1, semantic), \
        np.where(hit, 1, instance)
    normal[hit] = (0.0, 1.0, 0.0)
    for i, (kind, geometry) in enumerate(objects):
        t_obj, n_obj = _intersect(kind, geometry, o, d)
        hit = t_obj < t
        t = np.where(hit, t_obj, t)
        semantic = np.where(hit, kind, semantic)
        instance = np.where(hit, i + 2, instance)
        normal[hit] = n_obj[hit]
    valid = np.isfinite(t)
    point = o + np.where(valid, t, 0.0)[:, None] * d

    # shading: albedo x (ambient + direct light with shadows), textures, a little noise
    light = np.array([rng.uniform(-1, 1), rng.uniform(1.0, 2.0), rng.uniform(-1, 1)])
    light /= np.linalg.norm(light)
    shadow = np.zeros(n_pix, dtype=bool)  # a second ray per pixel, towards the light
    start = point + 1e-4 * normal
    for kind, geometry in objects:
        shadow |= np.isfinite(_shadow_hits(kind, geometry, start, light))
    colours = rng.uniform(0.15, 0.95, size=(len(objects) + 2, 3))
    colours[0] = (0.55, 0.75, 0.95)  # sky
    albedo = colours[instance]
    checker = (np.floor(point[:, 0] * rng.uniform(1, 3)) + np.floor(point[:, 2] * 2)) % 2
    stripes = np.sin(point[:, 1] * rng.uniform(8, 20)) > 0
    pattern = np.where(semantic == 1, 0.7 + 0.3 * checker, np.where(semantic >= 2,
                                                                     0.8 + 0.2 * stripes, 1.0))
    direct = np.clip(normal @ light, 0, None) * ~shadow
    shade = np.where(valid, 0.35 + 0.65 * direct, 1.0)
    image = albedo * (pattern * shade)[:, None] + rng.normal(0, 0.01, size=(n_pix, 3))

    depth = np.where(valid, t * (d @ camera.forward), 0.0)
    normal_cam = np.where(valid[:, None], camera.to_camera(normal), 0.0)
    inst = instance.reshape(size, size)
    edge = np.zeros((size, size), dtype=bool)
    edge[:, 1:] |= inst[:, 1:] != inst[:, :-1]
    edge[:, :-1] |= inst[:, 1:] != inst[:, :-1]
    edge[1:, :] |= inst[1:, :] != inst[:-1, :]
    edge[:-1, :] |= inst[1:, :] != inst[:-1, :]
    return Scene(
        image=np.clip(image, 0, 1).reshape(size, size, 3).transpose(2, 0, 1).astype(np.float32),
        semantic=semantic.reshape(size, size),
        depth=depth.reshape(size, size).astype(np.float32),
        normal=normal_cam.reshape(size, size, 3).transpose(2, 0, 1).astype(np.float32),
        edge=edge.astype(np.float32),
        tan_half_fov=camera.tan_half_fov,
    )


def _shadow_hits(kind: int, geometry: tuple, start: np.ndarray, light: np.ndarray) -> np.ndarray:
    """Distance along ``light`` from each start point to the object (inf when missed)."""
    if kind == 2:
        centre, radius = geometry
        oc = start - centre
        b = oc @ light
        disc = b * b - ((oc * oc).sum(1) - radius * radius)
        t = np.where(disc > 0, -b - np.sqrt(np.maximum(disc, 0)), _FAR)
        t2 = np.where(disc > 0, -b + np.sqrt(np.maximum(disc, 0)), _FAR)
        return np.where(t > 1e-6, t, np.where(t2 > 1e-6, t2, _FAR))
    if kind == 3:
        centre, half, angle = geometry
        c, s = np.cos(angle), np.sin(angle)
        rot = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
        lo = (start - centre) @ rot
        ld = light @ rot
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = np.where(np.abs(ld) > 1e-12, 1.0 / ld, 1e12)
        t1, t2 = (-half - lo) * inv, (half - lo) * inv
        tmin, tmax = np.minimum(t1, t2).max(1), np.maximum(t1, t2).min(1)
        return np.where((tmax >= tmin) & (tmax > 1e-6), np.maximum(tmin, 0), _FAR)
    base, radius, height = geometry
    ox, oz = start[:, 0] - base[0], start[:, 2] - base[2]
    a = light[0] ** 2 + light[2] ** 2
    b = 2 * (ox * light[0] + oz * light[2])
    disc = b * b - 4 * a * (ox * ox + oz * oz - radius * radius)
    out = np.full(len(start), _FAR)
    for sign in (-1.0, 1.0):
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(disc > 0, (-b + sign * np.sqrt(np.maximum(disc, 0))) / (2 * a), _FAR)
        y = start[:, 1] + t * light[1]
        out = np.minimum(out, np.where((t > 1e-6) & (y >= 0) & (y <= height), t, _FAR))
    with np.errstate(divide="ignore", invalid="ignore"):
        t_cap = np.where(abs(light[1]) > 1e-12, (height - start[:, 1]) / light[1], _FAR)
    px, pz = ox + t_cap * light[0], oz + t_cap * light[2]
    return np.minimum(out, np.where((t_cap > 1e-6) & (px * px + pz * pz <= radius * radius),
                                    t_cap, _FAR))
