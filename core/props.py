"""Property groups the artist edits: per splat object (``obj.splat_physics``) and per helper object
(``obj.splat_role``: anchors, pokes, wind, colliders).

Only settings live here; what they mean for the backend is decided in core/scene_to_job.py and the modules it uses.
"""

import bpy
from bpy.props import (BoolProperty, EnumProperty, FloatProperty, FloatVectorProperty, IntProperty,
                       PointerProperty, StringProperty)

from ..backend import protocol
from . import materials, readouts

_MODEL_ITEMS = [
    ("fixed_corotated", "Elastic (fixed corotated)", "Elastic solid; the usual choice for plants and soft objects"),
    ("neo_hookean", "Elastic (Neo-Hookean)", "Elastic solid, better for large compression"),
    ("stvk_hencky", "Elastic (StVK Hencky)", "Elastic with a logarithmic strain measure"),
    ("von_mises", "Metal (von Mises)", "Elastic until it yields, then bends permanently"),
    ("drucker_prager", "Sand (Drucker-Prager)", "Granular material that piles and flows"),
    ("foam", "Foam", "Soft material that deforms permanently"),
    ("plasticine", "Plasticine", "Clay-like; keeps the shape it is pushed into"),
    ("snow", "Snow", "Hardens when compressed, fractures when pulled"),
]
assert tuple(k for k, *_ in _MODEL_ITEMS) == protocol.MATERIAL_MODELS

_BOUNDARY_ITEMS = [
    ("sticky", "Sticky", "Particles touching it stop"),
    ("slip", "Slip", "Particles slide along it without friction"),
    ("frictional", "Frictional", "Particles slide with Coulomb friction"),
]
assert tuple(k for k, *_ in _BOUNDARY_ITEMS) == protocol.BOUNDARY_KINDS

_PRIOR_ITEMS = [
    ("svd", "Image to video (SVD)", "Judge the motion with Stable Video Diffusion, from the active camera's first frame"),
    ("modelscope", "Text to video", "Judge the motion with a text-to-video model and a prompt describing it"),
    ("reference", "Reference video", "Fit the motion to a video file of the real object"),
    ("analytic", "Analytic (test)", "A synthetic target with known materials, for checking the setup"),
]
assert tuple(k for k, *_ in _PRIOR_ITEMS) == protocol.PRIORS

_FIELD_ITEMS = [
    ("kan_triplane", "KAN triplane", "Smooth spatial field of materials (default)"),
    ("mlp_triplane", "MLP triplane", "Spatial field with a small neural network"),
    ("per_particle", "Per particle", "One value per particle (needs many iterations)"),
    ("global", "Uniform", "One material for the whole object"),
]
assert tuple(k for k, *_ in _FIELD_ITEMS) == protocol.FIELDS

_STOP_ITEMS = [
    ("plateau", "Arrived", "Stop when the loss and the stiffness have stopped moving (default)"),
    ("decade", "One decade", "The paper's rule: stop when the stiffness stayed within the tolerance in decades "
                             "over 3 iterations (may stop while the stiffness is still moving)"),
]
assert tuple(k for k, *_ in _STOP_ITEMS) == protocol.STOP_RULES
_EST = protocol.ESTIMATE_DEFAULTS
_SIM = protocol.SIMULATION_DEFAULTS
_GROUND = protocol.SIMULATION.fields["ground"].fields  # the ground is off by default: its fields hold the defaults

_BAKE_ITEMS = [
    ("gn_cache", "Geometry Nodes cache", "Per-frame point clouds loaded by a Bake node; renders without Python"),
    ("ply_sequence", "PLY sequence", "One .ply per frame, read by the Import PLY node (Blender 4.5+)"),
    ("pc2", "Point cache (PC2)", "Positions only, played by a Mesh Cache modifier"),
    ("shape_keys", "Shape keys", "Stored inside the .blend; small objects only"),
]
assert tuple(k for k, *_ in _BAKE_ITEMS) == protocol.BAKE_TARGETS


# '//' paths are resolved at use time and kept pointing at the same place on Save As (core/bake/relocate.py).
_BLEND_RELATIVE = {"PATH_SUPPORTS_BLEND_RELATIVE"}


def _refresh_readout(self, context):
    obj = self.id_data
    if isinstance(obj, bpy.types.Object):
        readouts.update_readouts(obj)


def _toggle_heatmap(self, context):
    obj = self.id_data
    if isinstance(obj, bpy.types.Object):
        materials.show_heatmap(obj, self.show_heatmap)


_UNIT_ITEMS = [(u, u, f"Stiffness in {u}") for u in ("Pa", "kPa", "MPa", "GPa")]


def _get_stiffness(self):
    return self.youngs_modulus / materials.PRESSURE_UNITS[self.stiffness_unit]


def _set_stiffness(self, value):
    self.youngs_modulus = materials.pa_from(value, self.stiffness_unit)


def _get_display_size(self):
    return self.id_data.empty_display_size if getattr(self.id_data, "type", "") == "EMPTY" else 0.0


def _set_display_size(self, value):
    if getattr(self.id_data, "type", "") == "EMPTY":
        self.id_data.empty_display_size = value


def _is_empty(self, obj):
    return obj.type == "EMPTY"


class SplatPhysicsSettings(bpy.types.PropertyGroup):
    """Physics settings of one splat object."""

    enabled: BoolProperty(name="Particles", description="The object has been converted to MPM particles")
    domain: PointerProperty(
        name="Domain", type=bpy.types.Object, poll=_is_empty,
        description="Box empty whose world bounds are the simulation domain; scale it to give the motion room",
    )
    n_grid: IntProperty(
        name="Grid resolution", default=protocol.SIMULATION_DEFAULTS["n_grid"], min=protocol.N_GRID_MIN,
        max=protocol.N_GRID_MAX, update=_refresh_readout,
        description="Cells along the longest side of the domain. More cells: finer detail, slower",
    )
    particles_per_cell: FloatProperty(name="Particles per cell", default=0.0)
    occupied_cells: IntProperty(name="Occupied cells", default=0)

    fill_mode: EnumProperty(
        name="Fill interior", items=readouts.FILL_MODE_ITEMS, default="AUTO", update=_refresh_readout,
        description="Add particles inside closed shells so a hollow splat surface behaves like a solid",
    )
    fill_max_particles: IntProperty(name="Max fill particles", default=_SIM["fill"]["max_particles"], min=0,
                                     max=10_000_000)
    fill_resolution: IntProperty(
        name="Fill resolution", default=0, min=0, max=512, update=_refresh_readout,
        description="Cells along the object's longest side used to find the interior; 0 = twice the grid resolution",
    )
    fill_preview_count: IntProperty(name="Fill particles", default=-1, description="-1: not estimated yet")
    fill_preview_note: StringProperty(name="Fill", default="", description="What the fill found, in words")

    material_model: EnumProperty(name="Material", items=_MODEL_ITEMS, default=_SIM["material_model"])
    youngs_modulus: FloatProperty(
        name="Stiffness (E)", default=protocol.DEFAULT_E, min=materials.E_RANGE[0], max=materials.E_RANGE[1],
        precision=0,
        description="Young's modulus in Pa, used where the object has no 'youngs_modulus' attribute",
    )
    stiffness: FloatProperty(
        name="Stiffness (E)", get=_get_stiffness, set=_set_stiffness, min=0.0, soft_min=0.001, precision=3,
        description="Young's modulus in the unit beside it (Pa, kPa, MPa or GPa), used where the object has no "
                    "'youngs_modulus' attribute. Jelly ~5 kPa, rubber ~2 MPa, wood ~10 GPa",
    )
    stiffness_unit: EnumProperty(name="Unit", items=_UNIT_ITEMS, default="kPa",
                                 description="Unit the stiffness is shown and typed in")
    poisson_ratio: FloatProperty(name="Poisson ratio", default=protocol.DEFAULT_NU, min=materials.NU_RANGE[0],
                                 max=materials.NU_RANGE[1], precision=3)
    density: FloatProperty(name="Density (kg/m³)", default=protocol.DEFAULT_RHO, min=materials.RHO_RANGE[0],
                           max=materials.RHO_RANGE[1],
                           description="Mass per volume in kg/m³ (water 1000, wood ~600, steel 7850)")
    damping: FloatProperty(name="Damping", default=_SIM["damping"], min=0.0, max=100.0,
                           description="Velocity damping, 1/s")
    substep_dt: FloatProperty(
        name="Substep", default=0.0, min=0.0, max=0.1, precision=5, unit="TIME_ABSOLUTE",
        description="Length of one solver step in seconds; 0 = automatic from the material's wave speed (stable)",
    )

    use_ground: BoolProperty(name="Ground", default=False, description="A horizontal ground plane at a height")
    ground_height: FloatProperty(name="Height", default=_GROUND["height"].default, unit="LENGTH")
    ground_kind: EnumProperty(name="Ground", items=_BOUNDARY_ITEMS, default=_GROUND["kind"].default)
    ground_friction: FloatProperty(name="Friction", default=_GROUND["friction"].default, min=0.0, max=10.0)
    walls_kind: EnumProperty(name="Walls", items=_BOUNDARY_ITEMS, default=_SIM["walls"]["kind"])
    walls_friction: FloatProperty(name="Friction", default=_SIM["walls"]["friction"], min=0.0, max=10.0)

    # Estimate Materials
    prior: EnumProperty(name="Prior", items=_PRIOR_ITEMS, default="svd")
    prompt: StringProperty(name="Prompt", description="What the motion looks like, e.g. 'a flower swaying in the wind'")
    reference_video: StringProperty(name="Video", subtype="FILE_PATH", options=_BLEND_RELATIVE,
                                    description="Video file or folder of frames ('//' = next to the .blend)")
    reference_fps: FloatProperty(
        name="Video frame rate", default=0.0, min=0.0, max=10000.0,
        description="Frames per second of the reference video; 0 = read it from the file (a folder of frames "
                    "needs it). The motion is compared at the video's own frame times, whatever the scene's rate",
    )
    iterations: IntProperty(name="Iterations", default=_EST["iterations"], min=1, max=100000)
    stop_rule: EnumProperty(name="Stop", items=_STOP_ITEMS, default=_EST["stop_rule"])
    stop_tolerance: FloatProperty(
        name="Tolerance", default=_EST["stop_tolerance"], min=1e-6, max=1.0, subtype="FACTOR",
        description="Stop when, over the last iterations, the stiffness and the loss change by less than this "
                    "fraction (0.02 = 2 %); the default suits almost every object",
    )
    tolerance_decades: FloatProperty(
        name="Tolerance (decades)", default=_EST["tolerance_decades"], min=1e-6, max=10.0,
        description="One-decade rule: stop when the stiffness stayed within this many powers of ten over 3 "
                    "iterations (1 is the paper's value and stops early; 0.01 waits for far less movement)",
    )
    estimate_resolution: IntProperty(
        name="Resolution", default=0, min=0, max=4096, subtype="PIXEL",
        description="Long side of the frames the estimator renders, in pixels (same framing as the camera). "
                    "0 = automatic for the device: 256 px on a CPU, the video model's native size on a GPU",
    )
    estimate_max_particles: IntProperty(
        name="Max particles", default=0, min=0, max=10_000_000,
        description="Particles simulated while estimating (an even subsample; the result reaches every point). "
                    "0 = automatic for the device: 3,000 on a CPU, 100,000 on a GPU",
    )
    field: EnumProperty(name="Field", items=_FIELD_ITEMS, default=_EST["field"])
    learn_nu: BoolProperty(
        name="Learn Poisson ratio", default=_EST["learn_nu"],
        description="Off: Poisson's ratio stays as set. A video of a sway or wobble hardly shows it (it changes "
                    "the volume, not the bending), so learning it from one mostly adds noise",
    )
    estimate_density: BoolProperty(
        name="Learn density", default=_EST["estimate_density"],
        description="Learn density too. Stiffness and density only move the object through their ratio, "
                    "so learn it only when the other is known",
    )

    # Simulate & Bake
    bake_target: EnumProperty(name="Bake to", items=_BAKE_ITEMS, default="gn_cache")
    bake_dir: StringProperty(
        name="Bake folder", subtype="DIR_PATH", default="", options=_BLEND_RELATIVE,
        description="Where the cache goes; empty = //splat_cache/<object>/<target> next to the .blend",
    )

    # Stiffness heat map (written by core/materials.py)
    show_heatmap: BoolProperty(name="Stiffness heat map", default=False, update=_toggle_heatmap)
    heat_min_E: FloatProperty(name="Min E", default=0.0)
    heat_max_E: FloatProperty(name="Max E", default=0.0)
    heat_p5: FloatProperty(name="5%", default=0.0)
    heat_p50: FloatProperty(name="50%", default=0.0)
    heat_p95: FloatProperty(name="95%", default=0.0)
    heat_min_color: FloatVectorProperty(name="Soft", subtype="COLOR", size=3, min=0.0, max=1.0)
    heat_max_color: FloatVectorProperty(name="Stiff", subtype="COLOR", size=3, min=0.0, max=1.0)

    # The last outcome shown in the panel
    last_message: StringProperty(name="Message", default="")
    last_level: EnumProperty(
        name="Level", items=[("INFO", "Info", ""), ("WARNING", "Warning", ""), ("ERROR", "Error", "")], default="INFO"
    )
    last_log: StringProperty(name="Log", subtype="FILE_PATH", default="")


class SplatRoleSettings(bpy.types.PropertyGroup):
    """What a helper object does to the splat simulation."""

    role: EnumProperty(
        name="Role",
        items=[
            ("NONE", "None", "Not part of a splat simulation"),
            ("ANCHOR", "Anchor", "Particles inside this box or closed mesh are held in place"),
            ("POKE", "Poke", "Pushes particles within its radius along its arrow (local +Z) during a frame window"),
            ("WIND", "Wind", "Pushes all particles along its arrow (local +Z), with gusts"),
            ("COLLIDER", "Collider", "An axis-aligned box particles cannot enter; it may be animated"),
        ],
        default="NONE",
    )
    enabled: BoolProperty(name="Enabled", default=True)
    target: PointerProperty(
        name="Acts on", type=bpy.types.Object,
        description="The splat object this acts on; empty = every splat object in the scene",
    )
    strength: FloatProperty(name="Strength", default=5.0, min=0.0, description="Acceleration in m/s^2")
    start_frame: IntProperty(name="Start", default=1, description="First frame the force acts")
    end_frame: IntProperty(name="End", default=10, description="Last frame the force acts")
    use_end: BoolProperty(name="Stop", default=True, description="Stop at the end frame; off = until the end")
    gust_frequency: FloatProperty(name="Gust frequency", default=0.5, min=0.0, description="Hz")
    gust_amplitude: FloatProperty(name="Gust amount", default=0.3, min=0.0, max=1.0, subtype="FACTOR")
    radius: FloatProperty(
        name="Radius", get=_get_display_size, set=_set_display_size, min=1e-6, unit="LENGTH",
        description="Particles within this distance of the poke's origin are pushed (times the empty's scale)",
    )
    half_size: FloatProperty(
        name="Half size", get=_get_display_size, set=_set_display_size, min=1e-6, unit="LENGTH",
        description="Half the side of the box (times the empty's scale on each axis)",
    )
    kind: EnumProperty(name="Surface", items=_BOUNDARY_ITEMS, default="sticky")
    friction: FloatProperty(name="Friction", default=0.5, min=0.0, max=10.0)


classes = (SplatPhysicsSettings, SplatRoleSettings)


_register_classes, _unregister_classes = bpy.utils.register_classes_factory(classes)


def register():
    _register_classes()
    bpy.types.Object.splat_physics = PointerProperty(type=SplatPhysicsSettings)
    bpy.types.Object.splat_role = PointerProperty(type=SplatRoleSettings)
    bpy.types.Scene.splat_farm_command = StringProperty(
        name="Farm command", default="",
        description="The command that runs the jobs last written for a farm (select the text to copy it)",
    )


def unregister():
    del bpy.types.Scene.splat_farm_command
    del bpy.types.Object.splat_role
    del bpy.types.Object.splat_physics
    _unregister_classes()
