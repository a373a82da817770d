"""Physics operators: convert, interactions, fill preview, overrides, estimate, simulate & bake.

Thin wrappers over core/: every check and scene change lives there, so tests call the same code.
Long runs start a job and hand it to ``splat.monitor_job`` (modal, ESC cancels); in background
mode (no event loop) they wait for it instead.
"""

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, FloatProperty

from ..backend import protocol
from ..backend.client import registry
from ..core import farm, interactions, job_folder, materials, points, readouts, scene_to_job, workflow
from ..core.errors import SetupError
from ..core.ui import draw_stiffness, splat_object
from ..preferences import configured_python

FILL_PREVIEW_SUFFIX = " Fill Preview"


def _fail(op, obj, exc) -> set:
    message = str(exc)
    if obj is not None:
        workflow.set_status(obj, "ERROR", message)
    op.report({"ERROR"}, message)
    return {"CANCELLED"}


class _SplatOperator:
    @classmethod
    def poll(cls, context):
        return splat_object(context) is not None


class SPLAT_OT_convert_to_particles(_SplatOperator, bpy.types.Operator):
    """Prepare the object for MPM simulation: add a domain box and compute the grid readouts"""

    bl_idname = "splat.convert_to_particles"
    bl_label = "Convert to MPM Particles"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        obj = splat_object(context)
        try:
            domain = scene_to_job.convert_to_particles(context, obj)
        except SetupError as exc:
            return _fail(self, obj, exc)
        s = obj.splat_physics
        workflow.set_status(obj, "INFO", f"{materials.point_count(obj)} particles, domain '{domain.name}', "
                                         f"{s.particles_per_cell:.1f} particles per occupied cell")
        return {"FINISHED"}


class SPLAT_OT_add_interaction(_SplatOperator, bpy.types.Operator):
    """Add an anchor box, poke, wind or collider acting on the active splat object, sized and placed from
    the object: an anchor around its lowest tenth, a poke on its surface near the top facing it"""

    bl_idname = "splat.add_interaction"
    bl_label = "Add Interaction"
    bl_options = {"REGISTER", "UNDO"}

    role: EnumProperty(name="Role", items=[(r, r.capitalize(), "") for r in interactions.ROLES])

    def execute(self, context):
        obj = splat_object(context)
        try:
            positions = points.world_positions(obj)
        except SetupError as exc:
            return _fail(self, obj, exc)
        empty = interactions.add_sized_interaction(context, self.role, obj, positions)
        for ob in context.selected_objects:
            ob.select_set(False)
        empty.select_set(True)
        context.view_layer.objects.active = empty
        return {"FINISHED"}


class SPLAT_OT_mark_anchor_volume(bpy.types.Operator):
    """Make the selected meshes anchor volumes: particles inside them are held in place"""

    bl_idname = "splat.mark_anchor_volume"
    bl_label = "Selected Meshes as Anchors"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return any(o.type == "MESH" for o in context.selected_objects)

    def execute(self, context):
        target = next((o for o in context.selected_objects if o.splat_physics.enabled), None)
        volumes = [o for o in context.selected_objects if o.type == "MESH" and o != target]
        if not volumes:
            self.report({"ERROR"}, "Select the closed mesh(es) to use as anchors (and optionally the splat object)")
            return {"CANCELLED"}
        for ob in volumes:
            interactions.tag_anchor_volume(ob, target)
        self.report({"INFO"}, f"{len(volumes)} anchor volume(s)")
        return {"FINISHED"}


class SPLAT_OT_preview_fill(_SplatOperator, bpy.types.Operator):
    """Estimate the interior fill and show its particles as a temporary point object"""

    bl_idname = "splat.preview_fill"
    bl_label = "Preview Fill"
    bl_options = {"REGISTER", "UNDO"}

    show_points: BoolProperty(name="Show points", default=True)

    def execute(self, context):
        obj = splat_object(context)
        try:
            count, centres, note = readouts.estimate_fill(obj)
        except SetupError as exc:
            return _fail(self, obj, exc)
        obj.splat_physics.fill_preview_count, obj.splat_physics.fill_preview_note = count, note
        _remove_fill_preview(obj)
        if self.show_points and count:
            mesh = bpy.data.meshes.new(obj.name + FILL_PREVIEW_SUFFIX)
            mesh.vertices.add(count)
            mesh.vertices.foreach_set("co", np.ascontiguousarray(centres, np.float32).ravel())
            preview = bpy.data.objects.new(obj.name + FILL_PREVIEW_SUFFIX, mesh)
            preview.hide_render = True
            preview.hide_select = True
            context.scene.collection.objects.link(preview)
        self.report({"INFO"}, note)
        return {"FINISHED"}


def _remove_fill_preview(obj) -> None:
    old = bpy.data.objects.get(obj.name + FILL_PREVIEW_SUFFIX)
    if old is not None:
        mesh = old.data
        bpy.data.objects.remove(old, do_unlink=True)
        if mesh is not None and mesh.users == 0:
            bpy.data.meshes.remove(mesh)


class SPLAT_OT_clear_fill_preview(_SplatOperator, bpy.types.Operator):
    """Remove the fill preview points"""

    bl_idname = "splat.clear_fill_preview"
    bl_label = "Clear Fill Preview"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        _remove_fill_preview(splat_object(context))
        return {"FINISHED"}


class SPLAT_OT_override_materials(_SplatOperator, bpy.types.Operator):
    """Set stiffness, Poisson ratio and density on the selected points (all points if none is selected),
    and lock them so the next estimation keeps these values"""

    bl_idname = "splat.override_materials"
    bl_label = "Override Materials"
    bl_options = {"REGISTER", "UNDO"}

    youngs_modulus: FloatProperty(name="Stiffness (Pa)", default=protocol.DEFAULT_E, min=materials.E_RANGE[0],
                                  max=materials.E_RANGE[1],
                                  description="Young's modulus in Pa (for scripts; the dialog shows it with a unit)",
                                  options={"HIDDEN"})
    stiffness: FloatProperty(
        name="Stiffness (E)", min=0.0, soft_min=0.001, precision=3,
        get=lambda self: self.youngs_modulus / materials.PRESSURE_UNITS[self.stiffness_unit],
        set=lambda self, v: setattr(self, "youngs_modulus", materials.pa_from(v, self.stiffness_unit)),
        description="Young's modulus in the unit beside it")
    stiffness_unit: EnumProperty(name="Unit", items=[(u, u, "") for u in materials.PRESSURE_UNITS], default="kPa")
    poisson_ratio: FloatProperty(name="Poisson ratio", default=protocol.DEFAULT_NU, min=materials.NU_RANGE[0],
                                 max=materials.NU_RANGE[1])
    density: FloatProperty(name="Density (kg/m³)", default=protocol.DEFAULT_RHO, min=materials.RHO_RANGE[0],
                           max=materials.RHO_RANGE[1], description="kg/m³")
    lock: BoolProperty(name="Lock for estimation", default=True)

    def invoke(self, context, event):
        self.stiffness_unit = materials.pressure_unit(self.youngs_modulus)
        return context.window_manager.invoke_props_dialog(self)

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        draw_stiffness(layout, self, "stiffness", "stiffness_unit")
        for name in ("poisson_ratio", "density", "lock"):
            layout.prop(self, name)

    def execute(self, context):
        obj = splat_object(context)
        edit = obj.mode == "EDIT"
        if edit:
            bpy.ops.object.mode_set(mode="OBJECT")  # selection and attributes sync back to the mesh
        try:
            mask = materials.selected_points(obj)
            if not mask.any():
                mask = np.ones(materials.point_count(obj), dtype=bool)
            count = materials.override_materials(obj, mask, points.material_defaults(obj),
                                                 self.youngs_modulus, self.poisson_ratio, self.density, self.lock)
        except materials.MaterialsError as exc:
            return _fail(self, obj, exc)
        finally:
            if edit:
                bpy.ops.object.mode_set(mode="EDIT")
        workflow.set_status(obj, "INFO", f"Materials set on {count} points" + (" and locked" if self.lock else ""))
        return {"FINISHED"}


class SPLAT_OT_material_preset(_SplatOperator, bpy.types.Operator):
    """Set the material model, stiffness, Poisson ratio and density together to typical real values"""

    bl_idname = "splat.material_preset"
    bl_label = "Material Preset"
    bl_options = {"REGISTER", "UNDO"}

    preset: EnumProperty(name="Preset", items=[(k, v[0], f"{v[5]}: E {materials.format_pa(v[2])}, "
                                                         f"ν {v[3]:g}, {v[4]:g} kg/m³")
                                               for k, v in materials.MATERIAL_PRESETS.items()])

    def execute(self, context):
        obj = splat_object(context)
        materials.apply_preset(obj.splat_physics, self.preset)
        label, model, E, nu, rho, _ = materials.MATERIAL_PRESETS[self.preset]
        has = obj.data.attributes.get("youngs_modulus") is not None
        workflow.set_status(obj, "INFO", f"{label}: E {materials.format_pa(E)}, ν {nu:g}, {rho:g} kg/m³"
                            + (" (object defaults; the per-point values still apply: Override Materials sets "
                               "points)" if has else ""))
        return {"FINISHED"}


class SPLAT_OT_clear_material_locks(_SplatOperator, bpy.types.Operator):
    """Let the next estimation change every point again (removes the lock attribute, not the vertex group)"""

    bl_idname = "splat.clear_material_locks"
    bl_label = "Clear Locks"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        materials.remove_attr(splat_object(context), materials.LOCK_ATTR)
        return {"FINISHED"}


class SPLAT_OT_write_job(_SplatOperator, bpy.types.Operator):
    """Write the job folder without running it (to run the backend elsewhere, e.g. on a farm)"""

    bl_idname = "splat.write_job"
    bl_label = "Write Job"

    command: EnumProperty(name="Command", items=[("simulate", "Simulate", ""), ("estimate", "Estimate", "")])

    def execute(self, context):
        obj = splat_object(context)
        try:
            job_dir = workflow.prepare_job(context, obj, self.command)
        except SetupError as exc:
            return _fail(self, obj, exc)
        workflow.set_status(obj, "INFO", f"Job written: {job_dir}")
        self.report({"INFO"}, f"Job written: {job_dir}")
        return {"FINISHED"}


class SPLAT_OT_write_farm_jobs(bpy.types.Operator):
    """Write one job folder per selected splat object and a manifest, for `python -m backend batch`
    on this machine or a Ray cluster; the command to run is shown in the panel"""

    bl_idname = "splat.write_farm_jobs"
    bl_label = "Write Jobs for a Farm"

    command: EnumProperty(name="Command", items=[("simulate", "Simulate", ""), ("estimate", "Estimate", "")])

    @classmethod
    def poll(cls, context):
        return bool(farm.farm_objects(context))

    def execute(self, context):
        objects = farm.farm_objects(context)
        try:
            result = farm.write_farm_jobs(context, objects, self.command, configured_python(context))
        except SetupError as exc:
            return _fail(self, splat_object(context), exc)
        context.scene.splat_farm_command = result.command_line
        message = f"{len(result.folders)} job(s) and {result.manifest.name} written. Run: {result.command_line}"
        for obj in objects:
            workflow.set_status(obj, "INFO", message)
        if result.skipped:
            self.report({"WARNING"}, "Not written: " + "; ".join(result.skipped))
        if not job_folder.blend_saved():
            self.report({"WARNING"}, "The .blend is not saved, so the jobs are in a temporary folder; "
                                     "save it on shared storage before writing jobs for a farm")
        self.report({"INFO"}, message + ". " + farm.SHARED_STORAGE_NOTE)
        return {"FINISHED"}


def _follow(op, context, kind: str, obj) -> set:
    """Hand a started job to the monitor (UI) or wait for it (background); report the outcome."""
    if bpy.app.background:
        result = registry.wait(kind)
        s = obj.splat_physics
        op.report({"INFO" if result is not None and result.ok else s.last_level}, s.last_message)
    elif registry.active(kind) is not None:
        bpy.ops.splat.monitor_job("INVOKE_DEFAULT", kind=kind)
    else:  # it ended at once (e.g. the interpreter was not found)
        s = obj.splat_physics
        op.report({s.last_level}, s.last_message)
    return {"FINISHED"}


def _start_flow(op, context, start, kind):
    """Start a backend flow on the selected splat object and follow it (modal in the UI, blocking headless)."""
    obj = splat_object(context)
    try:
        start(context, obj)
    except SetupError as exc:
        return _fail(op, obj, exc)
    return _follow(op, context, kind, obj)


class SPLAT_OT_estimate_materials(_SplatOperator, bpy.types.Operator):
    """Estimate per-point stiffness, Poisson ratio and density with the chosen video prior.
    Runs in the background; the previous materials stay until the new ones are ready"""

    bl_idname = "splat.estimate_materials"
    bl_label = "Estimate Materials"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        return _start_flow(self, context, workflow.start_estimate, workflow.ESTIMATE)


class SPLAT_OT_preview_motion(_SplatOperator, bpy.types.Operator):
    """Simulate with the current materials and render it from the active camera, as the estimator sees it"""

    bl_idname = "splat.preview_motion"
    bl_label = "Preview Motion"

    def execute(self, context):
        return _start_flow(self, context, workflow.start_preview, workflow.PREVIEW)


class SPLAT_OT_simulate_bake(_SplatOperator, bpy.types.Operator):
    """Simulate the scene's frame range with the current materials and interactions, then bake it.
    A stopped bake resumes where it left off when run again with the same settings"""

    bl_idname = "splat.simulate_bake"
    bl_label = "Simulate & Bake"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        return _start_flow(self, context, workflow.start_simulate, workflow.SIMULATE)


class SPLAT_OT_free_bake(_SplatOperator, bpy.types.Operator):
    """Remove the baked animation from the object and delete the cache files the bake wrote
(anything else in the bake folder stays)"""

    bl_idname = "splat.free_bake"
    bl_label = "Free Bake"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        obj = splat_object(context)
        try:
            workflow.free_bake(obj)
        except (ImportError, ValueError, RuntimeError) as exc:
            return _fail(self, obj, exc)
        except OSError as exc:  # e.g. the cache folder became read-only
            return _fail(self, obj, f"Cannot delete the bake's files: {exc.strerror or exc} ({exc.filename})")
        return {"FINISHED"}


class SPLAT_OT_open_log(bpy.types.Operator):
    """Open the log of the last run"""

    bl_idname = "splat.open_log"
    bl_label = "Open Log"

    filepath: bpy.props.StringProperty(subtype="FILE_PATH")

    def execute(self, context):
        bpy.ops.wm.path_open(filepath=self.filepath)
        return {"FINISHED"}


classes = (
    SPLAT_OT_convert_to_particles,
    SPLAT_OT_add_interaction,
    SPLAT_OT_mark_anchor_volume,
    SPLAT_OT_preview_fill,
    SPLAT_OT_clear_fill_preview,
    SPLAT_OT_override_materials,
    SPLAT_OT_material_preset,
    SPLAT_OT_clear_material_locks,
    SPLAT_OT_write_job,
    SPLAT_OT_write_farm_jobs,
    SPLAT_OT_estimate_materials,
    SPLAT_OT_preview_motion,
    SPLAT_OT_simulate_bake,
    SPLAT_OT_free_bake,
    SPLAT_OT_open_log,
)


register, unregister = bpy.utils.register_classes_factory(classes)
