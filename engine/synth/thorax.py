"""Shared thoracic anatomy for the CT and PET phantoms (esophagus, gtv, pet).

The body frame is centred on the esophagus at mid-height: ``z`` superior, ``y`` posterior,
``x`` patient-left. Neighbouring organs are placed *relative to the esophagus* with sampled
fat gaps, so the distances that decide the esophageal T-stage (wall → aorta, wall →
pericardium) are controlled rather than accidental. The layout follows an axial CT at the
level of the mid/lower thoracic esophagus: vertebral body behind the esophagus, descending
aorta to its left-posterior, trachea (above the carina) and the heart's pericardial sac in
front, lungs laterally, the liver dome under the right lung.

The esophageal wall is drawn as concentric layers: lumen, inner layers (mucosa +
submucosa), muscularis propria, and a periesophageal fat cuff. Each layer is at least two
voxels thick on the grid it is drawn on (``min_layer_mm``), which exaggerates the wall on
coarse grids; that is intended, so that invasion depth stays resolvable in the small preset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.synth.shapes import Canvas, Ellipsoid, Grid, Segment, Shape, Tube, Wiggle

TISSUES = (
    "air", "fat", "muscle", "liver", "lung", "lung_vessel", "mediastinal_fat", "node",
    "bone", "bone_cortex", "disc", "canal", "aorta", "trachea_wall", "trachea_air",
    "pericardium", "epicardial_fat", "heart", "heart_blood",
    "esophagus_muscle", "esophagus_inner", "esophagus_lumen", "tumour",
)
#: Tissues that belong to the pericardial sac (label "pericardium" in the esophagus task).
PERICARDIAL_SAC = ("pericardium", "epicardial_fat", "heart", "heart_blood")
ESOPHAGUS = ("esophagus_muscle", "esophagus_inner", "esophagus_lumen")
#: Structures a tumour never paints over: they bound it, they are not replaced by it.
SOLID_NEIGHBOURS = ("aorta", *PERICARDIAL_SAC, "bone", "bone_cortex", "disc", "canal",
                    "trachea_wall", "trachea_air")
_FAR = 1000.0


@dataclass
class Thorax:
    """Sampled geometry of one thorax (all mm, body frame)."""

    esophagus: Tube          # outer wall surface (radius r_outer)
    r_lumen: float
    r_inner: float           # outer edge of mucosa + submucosa
    r_outer: float           # outer edge of the muscularis propria
    r_cuff: float            # extent of periesophageal fat
    body: Tube
    body_inner: Tube         # inner edge of subcutaneous fat
    cavity: Tube             # thoracic cavity (inside the chest wall)
    lungs: list[Ellipsoid]
    liver: Ellipsoid
    mediastinum: Tube
    vertebra: Tube
    cortex_mm: float
    disc_period: float
    disc_phase: float
    disc_height: float
    arch: Tube
    canal: Tube
    spinous: Tube
    aorta: Tube
    trachea: Tube
    trachea_lumen: Tube
    bronchi: list[Segment]
    bronchi_lumen: list[Segment]
    z_carina: float
    sac: Ellipsoid           # pericardial sac (outer surface)
    heart: Ellipsoid         # myocardium (inside the pericardium and epicardial fat)
    heart_blood: Ellipsoid
    nodes: list[Ellipsoid] = field(default_factory=list)
    vessels: list[Segment] = field(default_factory=list)

    def centre(self, z: float) -> np.ndarray:
        """Esophageal centre (z, y, x) at height z."""
        return np.array([z, float(self.esophagus.cy(z)), float(self.esophagus.cx(z))])

    def obstacles(self) -> list[Shape]:
        """Solid organs around the esophagus that bound periesophageal tumour growth."""
        return [self.aorta, self.sac, self.vertebra, self.trachea, *self.bronchi]


def sample_thorax(rng: np.random.Generator, min_layer_mm: float, n_nodes: int = 3,
                  n_vessels: int = 0) -> Thorax:
    """Draw one thorax. ``min_layer_mm`` is the thinnest wall layer the grid can resolve."""
    u = rng.uniform
    # --- esophagus: layered tube, gently curving along z
    r_lumen = max(u(1.5, 3.0), 0.5 * min_layer_mm)
    t_inner = max(u(1.6, 2.4), min_layer_mm) * u(1.0, 1.15)
    t_muscle = max(u(1.8, 2.8), min_layer_mm) * u(1.0, 1.15)
    r_inner = r_lumen + t_inner
    r_outer = r_inner + t_muscle
    r_cuff = r_outer + max(u(6.0, 10.0), 3 * min_layer_mm)
    ecy = Wiggle.random(rng, 0.0, 3.0, slope=0.03)
    ecx = Wiggle.random(rng, 0.0, 3.0, slope=0.05)
    esophagus = Tube(-_FAR, _FAR, ecy, ecx, Wiggle(r_outer), Wiggle(r_outer))

    # --- spine behind the esophagus, following it so the fat gap is controlled
    r_vb = u(14.0, 18.0)
    y_vb = r_outer + u(5.0, 9.0) + 0.9 * r_vb
    vertebra = Tube(-_FAR, _FAR, ecy.shifted(y_vb), ecx.shifted(u(-3, 3)), Wiggle(0.9 * r_vb), Wiggle(r_vb))
    r_canal = u(6.0, 8.0)
    y_canal = y_vb + 0.9 * r_vb + r_canal + 1.0
    arch = Tube(-_FAR, _FAR, vertebra.cy.shifted(y_canal - y_vb), vertebra.cx,
                Wiggle(r_canal + 5.0), Wiggle(r_canal + 9.0))
    canal = arch.with_radius(r_canal, r_canal * 1.1)
    spinous = Tube(-_FAR, _FAR, vertebra.cy.shifted(y_canal - y_vb + r_canal + 12.0), vertebra.cx,
                   Wiggle(13.0), Wiggle(4.0))

    # --- descending aorta, left-posterior of the esophagus, clear of the vertebral body
    r_ao = u(10.0, 14.0)
    angle = np.radians(u(15.0, 40.0))
    dist = r_outer + u(3.0, 8.0) + r_ao
    ax, ay = dist * np.cos(angle), dist * np.sin(angle)
    vx = vertebra.cx.base
    clearance = np.hypot(ax - vx, ay - y_vb) - (r_ao + r_vb + 2.0)
    if clearance < 0:
        ax -= clearance
    aorta = Tube(-_FAR, _FAR, ecy.shifted(ay), ecx.shifted(ax), Wiggle(r_ao), Wiggle(r_ao))

    # --- trachea above the carina, in front of the esophagus; main bronchi below it
    z_carina = u(15.0, 45.0)
    r_tr = u(8.0, 11.0)
    t_tw = max(1.5, 0.75 * min_layer_mm)
    y_tr = -(r_outer + u(2.0, 5.0) + r_tr)
    trachea = Tube(z_carina, _FAR, ecy.shifted(y_tr), ecx.shifted(u(-3, 3)), Wiggle(r_tr), Wiggle(r_tr))
    trachea_lumen = trachea.with_radius(r_tr - t_tw)
    top = np.array([z_carina + 2.0, float(trachea.cy(z_carina)), float(trachea.cx(z_carina))])
    bronchi, bronchi_lumen = [], []
    r_b = 0.7 * r_tr
    for side in (-1.0, 1.0):
        end = top + np.array([-u(30.0, 40.0), u(4.0, 10.0), side * u(25.0, 35.0)])
        bronchi.append(Segment(tuple(top), tuple(end), r_b))  # type: ignore[arg-type]
        bronchi_lumen.append(Segment(tuple(top), tuple(end), r_b - t_tw))  # type: ignore[arg-type]

    # --- pericardial sac in front of the esophagus below the carina
    rz_h, ry_h, rx_h = u(42.0, 52.0), u(38.0, 46.0), u(48.0, 58.0)
    z_h = z_carina - u(10.0, 25.0) - rz_h
    x_h = u(5.0, 20.0)
    ez = np.array([z_h])
    ey, ex = float(ecy(ez)[0]), float(ecx(ez)[0])
    y_h = ey - r_outer - u(3.0, 8.0) - ry_h * np.sqrt(max(1.0 - ((ex - x_h) / rx_h) ** 2, 0.05))
    sac = Ellipsoid((z_h, y_h, x_h), (rz_h, ry_h, rx_h))
    t_peri = max(1.5, 0.75 * min_layer_mm)
    heart = sac.grown(-(t_peri + u(2.0, 5.0)))
    heart_blood = heart.scaled(0.65)

    # --- body wall, lungs, mediastinum, liver
    spine_tip = y_canal + r_canal + 25.0
    b_cy = u(-20.0, -10.0)
    b_ry = max(u(105.0, 118.0), spine_tip - b_cy + u(12.0, 20.0))
    b_rx = u(140.0, 165.0)
    body = Tube(-_FAR, _FAR, Wiggle(b_cy), Wiggle(u(-3, 3)), Wiggle(b_ry), Wiggle(b_rx))
    t_fat, t_wall = u(6.0, 18.0), u(10.0, 16.0)
    body_inner = body.with_radius(b_ry - t_fat, b_rx - t_fat)
    cavity = body.with_radius(b_ry - t_fat - t_wall, b_rx - t_fat - t_wall)
    lung_cz, lung_rz = u(-10.0, 10.0), u(130.0, 150.0)
    lungs = [Ellipsoid((lung_cz + u(-5, 5), u(-15.0, -5.0), side * u(55.0, 68.0)),
                       (lung_rz, u(58.0, 70.0), u(40.0, 50.0))) for side in (-1.0, 1.0)]
    liver = Ellipsoid((lung_cz - 0.8 * lung_rz, u(-30.0, -15.0), u(-50.0, -35.0)), (70.0, 80.0, 90.0))
    mediastinum = Tube(-_FAR, _FAR, Wiggle(u(-45.0, -35.0)), Wiggle(u(-2.0, 8.0)), Wiggle(u(55.0, 65.0)),
                       Wiggle(u(22.0, 30.0)))

    th = Thorax(esophagus, r_lumen, r_inner, r_outer, r_cuff, body, body_inner, cavity, lungs, liver,
                mediastinum, vertebra, max(1.5, 0.75 * min_layer_mm), u(24.0, 28.0), u(0.0, 28.0),
                max(4.0, min_layer_mm), arch, canal, spinous, aorta, trachea, trachea_lumen, bronchi,
                bronchi_lumen, z_carina, sac, heart, heart_blood)
    th.nodes = [_node(rng, th, min_layer_mm) for _ in range(n_nodes)]
    th.vessels = [_vessel(rng, th) for _ in range(n_vessels)]
    return th


def _node(rng: np.random.Generator, th: Thorax, min_layer_mm: float) -> Ellipsoid:
    """A lymph node in the periesophageal fat, clear of the esophageal wall."""
    r = np.array([rng.uniform(4.0, 8.0), rng.uniform(3.0, 6.0), rng.uniform(3.0, 6.0)])
    r = np.maximum(r, 1.2 * min_layer_mm)
    z = rng.uniform(-90.0, 90.0)
    phi = rng.uniform(1.9, 3.9) if rng.random() < 0.7 else rng.uniform(-1.2, -0.5)
    d = th.r_outer + rng.uniform(1.0, 3.0) + max(r[1], r[2])
    c = th.centre(z)
    return Ellipsoid((z, c[1] + d * np.sin(phi), c[2] + d * np.cos(phi)), tuple(r))  # type: ignore[arg-type]


def _vessel(rng: np.random.Generator, th: Thorax) -> Segment:
    """A pulmonary vessel running from the hilum out into one lung."""
    side = rng.choice([-1.0, 1.0])
    start = np.array([rng.uniform(-40.0, th.z_carina), rng.uniform(-30.0, 0.0), side * rng.uniform(30.0, 42.0)])
    direction = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.7, 0.7), side * rng.uniform(0.5, 1.0)])
    end = start + rng.uniform(40.0, 90.0) * direction / np.linalg.norm(direction)
    return Segment(tuple(start), tuple(end), float(rng.uniform(1.5, 4.0)))  # type: ignore[arg-type]


@dataclass(frozen=True)
class WallThickening:
    """Focal thickening of the esophageal wall by an intramural tumour (its mass effect).

    On CT an esophageal cancer that has not breached the wall is seen as focal, asymmetric
    wall thickening rather than by its density. The thickening is a radial warp: over a dome
    footprint (``z_centre`` ± ``half_length`` mm along the centre line, ``phi`` ± ``half_width``
    rad around it) the band of wall between the lumen and ``stretch_to_mm`` — the tumour's depth —
    is stretched outward by up to ``depth_mm``, the wall beyond it is pushed out by as much with
    its thickness kept, and the periesophageal fat cuff is compressed by as much, so nothing beyond
    the cuff moves. The added volume is therefore the tumour's own (it is the mass), not a
    thickened muscularis. Voxels are then painted, and staged, by their *undeformed* radius
    (:meth:`undeformed_radius`), which keeps every wall layer — and therefore the invasion-depth
    T-stage rule — topologically unchanged.
    """

    z_centre: float
    half_length: float
    phi: float
    half_width: float
    depth_mm: float
    #: Largest displacement allowed towards each of ``directions(len(cap_mm))``, so the wall stays
    #: clear of the organs around it.
    cap_mm: tuple[float, ...] | None = None
    #: Undeformed radius (mm) up to which the wall stretches; beyond it the wall only moves out.
    #: ``None`` stretches the whole wall (phantom versions 2–3, where a stretched muscularis took
    #: part of the added volume, labelled as wall).
    stretch_to_mm: float | None = None

    @staticmethod
    def directions(n: int) -> np.ndarray:
        """``n`` evenly spaced in-plane directions (rad) from −π, the angles ``cap_mm`` refers to."""
        return np.linspace(-np.pi, np.pi, n + 1)[:-1]

    def displacement(self, z: np.ndarray, phi: np.ndarray) -> np.ndarray:
        """Outward displacement (mm) of the outer wall edge: a smooth dome, 0 off the footprint."""
        dphi = np.angle(np.exp(1j * (phi - self.phi))) / self.half_width
        q2 = ((np.asarray(z) - self.z_centre) / self.half_length) ** 2 + dphi ** 2
        d = self.depth_mm * np.sqrt(np.clip(1.0 - q2, 0.0, 1.0))
        if self.cap_mm is not None:
            d = np.minimum(d, np.interp(phi, self.directions(len(self.cap_mm)), self.cap_mm, period=2 * np.pi))
        return d.astype(np.float32)

    def undeformed_radius(self, th: "Thorax", z: np.ndarray, rho: np.ndarray, phi: np.ndarray) -> np.ndarray:
        """Map a physical distance from the centre line to the radius it had before the thickening.

        Piecewise linear and monotone in ``rho``: identity inside the lumen and beyond the fat
        cuff; with ``a = stretch_to_mm`` (default ``r_outer``), ``[r_lumen, a + d]`` maps onto
        ``[r_lumen, a]``, ``[a + d, r_outer + d]`` onto ``[a, r_outer]`` (a shift) and
        ``[r_outer + d, r_cuff]`` onto ``[r_outer, r_cuff]``.
        """
        d = np.minimum(self.displacement(z, phi), 0.9 * (th.r_cuff - th.r_outer))
        a = th.r_outer if self.stretch_to_mm is None else float(np.clip(self.stretch_to_mm, th.r_lumen + 0.1,
                                                                         th.r_outer))
        stretched = th.r_lumen + (rho - th.r_lumen) * (a - th.r_lumen) / (a + d - th.r_lumen)
        cuff = th.r_outer + (rho - th.r_outer - d) * (th.r_cuff - th.r_outer) / (th.r_cuff - th.r_outer - d)
        out = np.where(rho <= a + d, stretched, np.where(rho <= th.r_outer + d, rho - d, cuff))
        return np.where((rho <= th.r_lumen) | (rho >= th.r_cuff), rho, out).astype(np.float32)


def esophagus_radius(grid: Grid, th: Thorax, thickening: WallThickening | None = None) -> np.ndarray:
    """Distance (mm) of each voxel from the esophageal centre line, within the fat cuff (inf elsewhere).

    With a ``thickening`` the distance is the undeformed one (see :class:`WallThickening`).
    """
    tube = th.esophagus
    box = tube.bounds(th.r_cuff / th.r_outer + 0.1, grid.z_range)

    def radius(z, y, x):
        rho, phi = tube.radial_mm(z, y, x)
        return rho if thickening is None else thickening.undeformed_radius(th, z, rho, phi)

    return grid.evaluate(radius, box, fill=np.inf)


def paint_thorax(canvas: Canvas, th: Thorax, thickening: WallThickening | None = None) -> np.ndarray:
    """Paint the anatomy in drawing order; returns the (undeformed) esophageal radius field (mm)."""
    g = canvas.grid
    canvas.paint("muscle", g.mask(th.body))
    canvas.paint("fat", g.mask(th.body) & ~g.mask(th.body_inner))
    cavity = g.mask(th.cavity)
    canvas.paint("liver", g.mask(th.liver) & cavity)
    for lung in th.lungs:
        canvas.paint("lung", g.mask(lung) & cavity)
    for vessel in th.vessels:
        canvas.paint("lung_vessel", g.mask(vessel), only_over=("lung",))
    canvas.paint("mediastinal_fat", g.mask(th.mediastinum) & cavity, not_over=("liver", "fat"))
    rho = esophagus_radius(g, th, thickening)
    canvas.paint("mediastinal_fat", rho < th.r_cuff, not_over=("fat", "air"))
    for node in th.nodes:
        canvas.paint("node", g.mask(node), only_over=("mediastinal_fat", "lung", "lung_vessel", "muscle"))
    # spine: vertebral bodies (cancellous bone, cortical shell, discs) and the posterior arch
    canvas.paint("bone_cortex", g.mask(th.arch))
    canvas.paint("bone", g.mask(th.arch.with_radius(th.arch.ry.base - th.cortex_mm, th.arch.rx.base - th.cortex_mm)))
    canvas.paint("bone_cortex", g.mask(th.spinous))
    canvas.paint("canal", g.mask(th.canal))
    vb = g.mask(th.vertebra)
    canvas.paint("bone_cortex", vb)
    inner = th.vertebra.with_radius(th.vertebra.ry.base - th.cortex_mm, th.vertebra.rx.base - th.cortex_mm)
    canvas.paint("bone", g.mask(inner))
    z = g.axes()[0]
    disc_rows = np.mod(z - th.disc_phase, th.disc_period) < th.disc_height
    canvas.paint("disc", vb & disc_rows)
    canvas.paint("aorta", g.mask(th.aorta))
    for outer, lumen in zip([th.trachea, *th.bronchi], [th.trachea_lumen, *th.bronchi_lumen]):
        canvas.paint("trachea_wall", g.mask(outer), not_over=("trachea_air",))
        canvas.paint("trachea_air", g.mask(lumen))
    canvas.paint("pericardium", g.mask(th.sac))
    canvas.paint("epicardial_fat", g.mask(th.heart.grown(2.0)))
    canvas.paint("heart", g.mask(th.heart))
    canvas.paint("heart_blood", g.mask(th.heart_blood))
    canvas.paint("esophagus_muscle", rho < th.r_outer)
    canvas.paint("esophagus_inner", rho < th.r_inner)
    canvas.paint("esophagus_lumen", rho < th.r_lumen)
    return rho


#: Portal-venous-phase enhancement (HU added to the non-contrast value), drawn per case. Blood pools
#: gain most, parenchyma less, muscle and the esophageal wall a little, fat, air and bone nothing.
VENOUS_ENHANCEMENT_HU = {
    "aorta": (100.0, 150.0), "heart_blood": (90.0, 140.0), "lung_vessel": (70.0, 110.0), "heart": (40.0, 60.0),
    "liver": (40.0, 60.0), "muscle": (8.0, 15.0), "node": (15.0, 30.0), "pericardium": (10.0, 20.0),
    "esophagus_wall": (12.0, 22.0),
}
PHASES = ("non-contrast", "venous")


def ct_values(rng: np.random.Generator, phase: str = "non-contrast") -> tuple[dict[str, float], dict[str, float]]:
    """Per-case mean HU and texture amplitude per tissue, for a non-contrast or portal-venous chest CT.

    Soft tissues share one case-level offset, like calibration drift between scanners. The
    esophageal inner layers are a little darker than the muscularis (submucosal fat/oedema):
    a subtle, realistic difference that only shows after averaging out noise. The venous phase
    draws the non-contrast values first (the same draws), then adds :data:`VENOUS_ENHANCEMENT_HU`;
    both wall layers gain the same amount, so their difference is kept.
    """
    if phase not in PHASES:
        raise ValueError(f"unknown CT phase {phase!r}; expected one of {PHASES}")
    u = rng.uniform
    off = u(-8.0, 8.0)
    inner = u(25.0, 36.0) + off
    mean = {
        "air": -1000.0, "fat": u(-110, -85) + off, "muscle": u(40, 55) + off, "liver": u(50, 65) + off,
        "lung": u(-880, -820), "lung_vessel": u(30, 50) + off, "mediastinal_fat": u(-105, -80) + off,
        "node": u(30, 50) + off, "bone": u(230, 380), "bone_cortex": u(650, 950), "disc": u(70, 100),
        "canal": u(15, 35) + off, "aorta": u(38, 55) + off, "trachea_wall": u(60, 120), "trachea_air": -990.0,
        "pericardium": u(20, 35) + off, "epicardial_fat": u(-90, -60) + off, "heart": u(35, 50) + off,
        "heart_blood": u(35, 50) + off, "esophagus_muscle": inner + u(6.0, 14.0), "esophagus_inner": inner,
        "esophagus_lumen": u(-950, -800) if rng.random() < 0.4 else u(5, 25) + off,
    }
    amp = {"fat": 12.0, "muscle": 6.0, "liver": 5.0, "lung": 25.0, "lung_vessel": 8.0, "mediastinal_fat": 12.0,
           "node": 6.0, "bone": 45.0, "bone_cortex": 60.0, "disc": 10.0, "aorta": 4.0, "heart": 4.0,
           "heart_blood": 4.0, "esophagus_muscle": 5.0, "esophagus_inner": 5.0, "trachea_wall": 15.0}
    if phase == "venous":
        gain = {t: u(*r) for t, r in VENOUS_ENHANCEMENT_HU.items()}
        gain["esophagus_muscle"] = gain["esophagus_inner"] = gain.pop("esophagus_wall")
        for tissue, hu in gain.items():
            mean[tissue] += hu
    return mean, amp
