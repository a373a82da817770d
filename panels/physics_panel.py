"""The "Splat Physics" tab of the 3D viewport sidebar: setup, interactions, estimation, simulate & bake."""

import bpy

from ..backend.estimation import budget
from ..core import interactions, jobs, materials, scene_to_job, workflow
from ..operators.physics_ops import splat_object

_LEVEL_ICONS = {"INFO": "INFO", "WARNING": "ERROR", "ERROR": "CANCEL"}


def _eta_text(seconds) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"ETA {seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    return f"ETA {seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"ETA {seconds}s"


def progress_text(runner) -> str:
    """'Iteration 3/30 · loss 0.0123 · ETA 2m05s' from the runner's last progress event."""
    ev = runner.last_progress
    if ev is None:
        return runner.stage_message or "Starting…"
    unit = "Iteration" if ev.stage == "estimate" else "Frame" if ev.stage == "simulate" else ev.stage.capitalize()
    parts = [f"{unit} {ev.step}/{ev.total}" if ev.total else unit]
    if ev.loss is not None:
        parts.append(f"loss {ev.loss:.4g}")
    if ev.eta_s is not None:
        parts.append(_eta_text(ev.eta_s))
    return " · ".join(parts)


def draw_job(layout, kind: str, obj) -> bool:
    """Progress bar, stage message and Cancel for a running job on ``obj``. True if one is running."""
    job = jobs.active(kind)
    if job is None or job.label != obj.name:
        return False
    runner = job.runner
    col = layout.column(align=True)
    text = progress_text(runner)
    col.progress(text=text, factor=runner.fraction, type="BAR")
    if runner.stage_message and runner.stage_message != text:  # before the first progress event the bar says it
        col.label(text=runner.stage_message)
    col.operator("splat.cancel_job", text="Cancel (Esc)", icon="CANCEL").kind = kind
    return True


class _SplatPanel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Splat Physics"

    @classmethod
    def poll(cls, context):
        return splat_object(context) is not None


class _Converted(_SplatPanel):
    bl_parent_id = "SPLAT_PT_physics"

    @classmethod
    def poll(cls, context):
        obj = splat_object(context)
        return obj is not None and obj.splat_physics.enabled


class SPLAT_PT_physics(_SplatPanel, bpy.types.Panel):
    bl_label = "Splat Physics"

    @classmethod
    def poll(cls, context):
        return True  # the tab stays, and says what to select, when no splat object is active

    def draw(self, context):
        layout = self.layout
        obj = splat_object(context)
        if obj is None:
            layout.label(text="Select a splat object or a point mesh", icon="INFO")
            layout.operator("import_scene.gaussian_splat", text="Import Gaussian Splat", icon="IMPORT")
            return
        s = obj.splat_physics
        row = layout.row()
        row.label(text=obj.name, icon="OUTLINER_OB_POINTCLOUD")
        row.label(text=f"{materials.point_count(obj):,} points")
        if not s.enabled:
            layout.operator("splat.convert_to_particles", icon="MOD_PARTICLES")
        if s.last_message:
            box = layout.box()
            col = box.column(align=True)
            _wrapped(col, s.last_message, icon=_LEVEL_ICONS.get(s.last_level, "INFO"))
            if s.last_log:
                col.operator("splat.open_log", icon="TEXT").filepath = s.last_log
        draw_farm_command(layout, context)


def draw_farm_command(layout, context) -> None:
    """The last farm command as a text field: select it and Ctrl+C to copy it into a terminal."""
    command = context.scene.splat_farm_command
    if command:
        box = layout.box()
        box.label(text="Run the farm jobs (copy this line):", icon="CONSOLE")
        box.prop(context.scene, "splat_farm_command", text="")
        box.label(text="On a Ray cluster: add --address auto, on the head node")


def draw_stiffness(layout, data, value: str, unit: str) -> None:
    """Stiffness as a number and its pressure unit side by side (Blender has no pressure unit)."""
    row = layout.row(align=True)
    row.prop(data, value, text=f"Stiffness E ({getattr(data, unit)})")
    row.prop(data, unit, text="")


def _wrapped(layout, text: str, icon: str = "NONE", width: int = 48) -> None:
    """Sidebar labels do not wrap: split a long message into lines."""
    words, line, first = text.split(), "", True
    for w in words:
        if line and len(line) + len(w) + 1 > width:
            layout.label(text=line, icon=icon if first else "BLANK1")
            line, first = w, False
        else:
            line = f"{line} {w}" if line else w
    if line:
        layout.label(text=line, icon=icon if first else "BLANK1")


class SPLAT_PT_domain(_Converted, bpy.types.Panel):
    bl_label = "Domain & Grid"

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        obj = splat_object(context)
        s = obj.splat_physics
        layout.prop(s, "domain")
        layout.prop(s, "n_grid")
        row = layout.row()
        row.alignment = "RIGHT"
        row.label(text=f"{s.particles_per_cell:.1f} particles per cell ({s.occupied_cells:,} cells occupied)")
        layout.prop(s, "fill_mode")
        col = layout.column()
        col.active = s.fill_mode != "OFF"
        col.prop(s, "fill_resolution")
        col.prop(s, "fill_max_particles")
        row = col.row(align=True)
        row.operator("splat.preview_fill", icon="HIDE_OFF")
        row.operator("splat.clear_fill_preview", text="", icon="X")
        if s.fill_preview_count >= 0:
            col.label(text=f"Fill adds {s.fill_preview_count:,} particles")
        if s.fill_preview_note:
            col.label(text=s.fill_preview_note)


class SPLAT_PT_material(_Converted, bpy.types.Panel):
    bl_label = "Material"

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        obj = splat_object(context)
        s = obj.splat_physics
        layout.operator_menu_enum("splat.material_preset", "preset", text="Presets", icon="PRESET")
        layout.prop(s, "material_model")
        has = obj.data.attributes.get("youngs_modulus") is not None
        if has:  # what the simulation uses comes first; the object defaults below then fill nothing
            box = layout.box()
            box.label(text="Per-point values (from the attributes)", icon="POINTCLOUD_DATA")
            box.label(text="Stiffness 5% {} · 50% {} · 95% {}".format(
                *(materials.format_pa(v) for v in (s.heat_p5, s.heat_p50, s.heat_p95))))
        col = layout.column()
        col.active = not has
        col.label(text="Defaults (unused: every point has its own values)" if has
                  else "Defaults (no material attributes yet)")
        draw_stiffness(col, s, "stiffness", "stiffness_unit")
        col.prop(s, "poisson_ratio")
        col.prop(s, "density")
        row = layout.row(align=True)
        row.operator("splat.override_materials", icon="BRUSH_DATA")
        row.operator("splat.clear_material_locks", icon="UNLOCKED")
        layout.prop(s, "show_heatmap")
        if s.show_heatmap and s.heat_max_E > 0:
            box = layout.box()
            row = box.row()
            row.prop(s, "heat_min_color", text="")
            row.label(text=materials.format_pa(s.heat_min_E))
            row.prop(s, "heat_max_color", text="")
            row.label(text=materials.format_pa(s.heat_max_E))
            box.label(text="5% {} · 50% {} · 95% {}".format(*(materials.format_pa(v) for v in
                                                             (s.heat_p5, s.heat_p50, s.heat_p95))))


class SPLAT_PT_forces(_Converted, bpy.types.Panel):
    bl_label = "Forces & Boundaries"

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        scene = context.scene
        s = splat_object(context).splat_physics
        layout.prop(scene, "use_gravity")
        sub = layout.column()
        sub.active = scene.use_gravity
        sub.prop(scene, "gravity")
        layout.prop(s, "use_ground")
        sub = layout.column()
        sub.active = s.use_ground
        sub.prop(s, "ground_height")
        sub.prop(s, "ground_kind")
        fr = sub.column()
        fr.active = s.ground_kind == "frictional"  # sticky and slip ignore friction
        fr.prop(s, "ground_friction")
        layout.prop(s, "walls_kind")
        sub = layout.column()
        sub.active = s.walls_kind == "frictional"
        sub.prop(s, "walls_friction")
        layout.prop(s, "damping")
        layout.prop(s, "substep_dt", text="Substep (0 = auto)")
        fps = interactions.scene_fps(scene)
        layout.label(text=f"Frames {scene.frame_start}–{scene.frame_end} at {fps:g} fps "
                          f"({(scene.frame_end - scene.frame_start) / fps:.2f} s)")


class SPLAT_PT_interactions(_Converted, bpy.types.Panel):
    bl_label = "Interactions"

    def draw(self, context):
        layout = self.layout
        obj = splat_object(context)
        grid = layout.grid_flow(columns=2, align=True)
        for role, icon in (("ANCHOR", "PINNED"), ("POKE", "EMPTY_SINGLE_ARROW"), ("WIND", "FORCE_WIND"),
                           ("COLLIDER", "CUBE")):
            grid.operator("splat.add_interaction", text=role.capitalize(), icon=icon).role = role
        layout.operator("splat.mark_anchor_volume", icon="MESH_CUBE")
        for ob in interactions.interaction_objects(context.scene, obj):
            row = layout.row()
            row.label(text=f"{ob.name}: {interactions.describe(ob, context.scene)}")
        active = context.active_object
        if active is not None and active.splat_role.role != "NONE":
            draw_role(layout.box(), active)


def draw_role(layout, ob) -> None:
    """Settings of one interaction object."""
    r = ob.splat_role
    layout.use_property_split = True
    layout.label(text=ob.name, icon="EMPTY_DATA")
    layout.prop(r, "role")
    layout.prop(r, "enabled")
    layout.prop(r, "target")
    if r.role in ("POKE", "WIND"):
        layout.prop(r, "strength")
        if r.role == "POKE" and ob.type == "EMPTY":
            layout.prop(r, "radius")
        if r.role == "WIND":
            layout.prop(r, "gust_frequency")
            layout.prop(r, "gust_amplitude")
        col = layout.column(align=True)
        col.prop(r, "start_frame")
        row = col.row(align=True)
        row.prop(r, "use_end")
        sub = row.row()
        sub.active = r.use_end
        sub.prop(r, "end_frame", text="")
    elif r.role == "COLLIDER":
        layout.prop(r, "kind")
        sub = layout.column()
        sub.active = r.kind == "frictional"
        sub.prop(r, "friction")
        if ob.type == "EMPTY":
            layout.prop(r, "half_size")
    elif r.role == "ANCHOR" and ob.type == "EMPTY":
        layout.prop(r, "half_size")


class SPLAT_PT_estimate(_Converted, bpy.types.Panel):
    bl_label = "Estimate Materials"

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        obj = splat_object(context)
        s = obj.splat_physics
        where, why, best = scene_to_job.device_guidance()
        box = layout.box().column(align=True)
        box.label(text=where, icon="MEMORY")
        _wrapped(box, why, icon="BLANK1")
        if s.prior != best:
            box.label(text=f"Recommended here: {_prior_name(s, best)}", icon="LIGHT")
        layout.prop(s, "prior")
        if s.prior == "svd":
            cam = context.scene.camera
            layout.label(text=f"First frame seen by '{cam.name}'" if cam else "Needs an active camera",
                         icon="CAMERA_DATA" if cam else "ERROR")
        elif s.prior == "modelscope":
            layout.prop(s, "prompt")
        else:
            layout.prop(s, "reference_video")
            layout.prop(s, "reference_fps")
        layout.prop(s, "iterations")
        layout.prop(s, "stop_rule")
        layout.prop(s, "tolerance_decades" if s.stop_rule == "decade" else "stop_tolerance")
        layout.prop(s, "field")
        layout.prop(s, "learn_nu")
        layout.prop(s, "estimate_density")
        draw_estimate_size(layout, context, obj)
        if not draw_job(layout, workflow.ESTIMATE, obj):
            layout.operator("splat.estimate_materials", icon="SHADERFX")
        if not draw_job(layout, workflow.PREVIEW, obj):
            layout.operator("splat.preview_motion", icon="RENDER_ANIMATION")
        layout.operator("splat.write_farm_jobs", icon="NETWORK_DRIVE").command = "estimate"


def _prior_name(settings, key: str) -> str:
    items = settings.bl_rna.properties["prior"].enum_items
    return items[key].name if key in items else key


def draw_estimate_size(layout, context, obj) -> None:
    """Resolution and particle budget (0 = automatic), and the projected cost of one iteration."""
    s = obj.splat_physics
    col = layout.column(align=True)
    col.prop(s, "estimate_resolution", text="Resolution (0 = auto)")
    col.prop(s, "estimate_max_particles", text="Max particles (0 = auto)")
    try:
        proj, n, width, height = scene_to_job.panel_projection(context, obj)
    except (scene_to_job.SetupError, ValueError, KeyError, ZeroDivisionError):
        return
    col.label(text=f"{width}×{height} px, {n:,} particles: {proj.text()}", icon="TIME")
    free = budget.available_memory_mb()
    if budget.refusal(proj, free, "") is not None:
        col.label(text=f"Will not fit in the {budget.human_mb(free)} free: lower Resolution or Max particles",
                  icon="ERROR")


class SPLAT_PT_bake(_Converted, bpy.types.Panel):
    bl_label = "Simulate & Bake"

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        obj = splat_object(context)
        s = obj.splat_physics
        layout.prop(s, "bake_target")
        layout.prop(s, "bake_dir", text="Folder")
        if not bpy.data.filepath and (not s.bake_dir.strip() or s.bake_dir.startswith("//")):
            layout.label(text="Save the .blend first: caches go next to it", icon="ERROR")
        size = _projected_size(obj)
        if size is not None:
            layout.label(text=f"Projected size on disk: {workflow.human_bytes(size)}", icon="DISK_DRIVE")
        if not draw_job(layout, workflow.SIMULATE, obj):
            layout.operator("splat.simulate_bake", icon="PHYSICS")
        layout.operator("splat.free_bake", icon="TRASH")
        layout.operator("splat.write_job", icon="FILE_FOLDER").command = "simulate"
        layout.operator("splat.write_farm_jobs", icon="NETWORK_DRIVE").command = "simulate"


def _projected_size(obj):
    try:
        return workflow.projected_bake_size(obj)
    except (ValueError, KeyError, AttributeError):
        return None


classes = (SPLAT_PT_physics, SPLAT_PT_domain, SPLAT_PT_material, SPLAT_PT_forces, SPLAT_PT_interactions,
           SPLAT_PT_estimate, SPLAT_PT_bake)


register, unregister = bpy.utils.register_classes_factory(classes)
