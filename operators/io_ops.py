"""File > Import / Export > Gaussian Splat (.ply): thin operators over core.splat_objects."""

import os

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, StringProperty
from bpy_extras.io_utils import ExportHelper, ImportHelper, axis_conversion, orientation_helper

from ..backend.io.ply import PlyError
from ..core import look, splat_objects

# Above this many splats the viewport shows points (renders still get splats).
VIEWPORT_POINTS_ABOVE = 200_000


# Axis conventions captures are saved in: (label, file axis that is Blender's forward +Y, file axis that is up +Z).
AXIS_PRESETS = {
    "BLENDER": ("Blender (Z up)", "Y", "Z", "Saved from Blender or another Z-up tool: no conversion"),
    "3DGS": ("3DGS / COLMAP (Y down)", "Z", "-Y", "The reference 3D Gaussian Splatting output: COLMAP's axes, "
                                                  "Y down and Z forward"),
    "Y_UP": ("Y up", "-Z", "Y", "Y-up tools and scans (glTF, OBJ, the Stanford bunny)"),
}


def _apply_axis_preset(self, context):
    if self.axis_preset in AXIS_PRESETS:
        _label, self.axis_forward, self.axis_up, _desc = AXIS_PRESETS[self.axis_preset]


def _axes(op) -> tuple[str, str]:
    """(forward, up) of the file: the preset's, or the Forward/Up options for Custom."""
    if op.axis_preset in AXIS_PRESETS:
        return AXIS_PRESETS[op.axis_preset][1:3]
    return op.axis_forward, op.axis_up


def _draw_options(op, names) -> None:
    layout = op.layout
    layout.use_property_split = True
    for name in names:
        layout.prop(op, name)
    layout.prop(op, "axis_preset")
    col = layout.column()
    col.active = op.axis_preset == "CUSTOM"
    col.prop(op, "axis_forward")
    col.prop(op, "axis_up")


def _axis_preset_prop():
    items = [(k, v[0], v[3]) for k, v in AXIS_PRESETS.items()] + [("CUSTOM", "Custom", "Forward and Up below")]
    return EnumProperty(name="Axes", items=items, default="BLENDER", update=_apply_axis_preset,
                        description="The axis convention the file was saved in")


@orientation_helper(axis_forward="Y", axis_up="Z")
class IMPORT_SCENE_OT_gaussian_splat(bpy.types.Operator, ImportHelper):
    """Import a 3D Gaussian Splatting PLY (or a plain point-cloud PLY) as a splat object"""

    bl_idname = "import_scene.gaussian_splat"
    bl_label = "Import Gaussian Splat"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ".ply"
    filter_glob: StringProperty(default="*.ply", options={"HIDDEN"})
    splat_look: BoolProperty(name="Splat Look", default=True,
                             description="Draw each point as an oriented Gaussian ellipsoid (geometry nodes)")
    splat_size: FloatProperty(name="Splat Size", default=look.DEFAULT_SPLAT_SIZE, min=0.1, max=6.0,
                              description="Ellipsoid extent in standard deviations")
    viewport_points: BoolProperty(name="Points in Viewport", default=False,
                                  description="Show points in the viewport and splats in renders "
                                              f"(always on above {VIEWPORT_POINTS_ABOVE:,} splats)")
    axis_preset: _axis_preset_prop()
    standard_view: BoolProperty(
        name="Standard View Transform", default=True,
        description="Set the scene's view transform to Standard. Splat colours are display-referred sRGB, as "
                    "splat viewers show them; AgX (Blender's default) desaturates them by about 30%. On by "
                    "default for a new scene")
    view_colour: BoolProperty(
        name="View-Dependent Colour", default=False,
        description="Render the colour each splat shows from the active camera (SH degree 1-3, when the file "
                    "has them) instead of its flat base colour")

    def invoke(self, context, event):
        # A new scene (the default objects at most, Blender's own view transform) gets splat-viewer colours;
        # an artist's established scene keeps its look unless they tick the box.
        view = context.scene.view_settings.view_transform
        self.standard_view = view in ("AgX", "Filmic", "Standard") and len(context.scene.objects) <= 3
        return super().invoke(context, event)

    def draw(self, context):
        _draw_options(self, ("splat_look", "splat_size", "viewport_points", "standard_view", "view_colour"))

    def execute(self, context):
        warnings = []
        forward, up = _axes(self)
        matrix = axis_conversion(from_forward=forward, from_up=up)
        try:
            obj = splat_objects.import_splats(self.filepath, context, look=False, warnings=warnings,
                                       axis_matrix=[list(row) for row in matrix])
        except (PlyError, splat_objects.SplatError) as exc:
            self.report({"ERROR"}, f"Cannot import splats: {exc}")
            return {"CANCELLED"}
        except MemoryError:
            self.report({"ERROR"}, f"Cannot import splats: {self.filepath} is too large for the available memory")
            return {"CANCELLED"}
        except (ValueError, OSError) as exc:  # anything the reader did not foresee: still no traceback
            self.report({"ERROR"}, f"Cannot import splats from {self.filepath}: {exc}")
            return {"CANCELLED"}
        if self.splat_look:
            look.apply_splat_look(obj, source="attributes", splat_size=self.splat_size)
            if self.viewport_points or len(obj.data.vertices) > VIEWPORT_POINTS_ABOVE:
                look.set_splat_display(obj, "POINTS")
            look.set_view_colour(obj, self.view_colour)
        if self.standard_view and context.scene.view_settings.view_transform != "Standard":
            view = context.scene.view_settings
            self.report({"INFO"}, f"View transform set from {view.view_transform} to Standard, so splat colours "
                                  "look as in splat viewers")
            view.view_transform, view.look = "Standard", "None"
        for view_layer_obj in context.view_layer.objects:
            view_layer_obj.select_set(False)
        if obj.name in context.view_layer.objects:
            obj.select_set(True)
            context.view_layer.objects.active = obj
        for w in warnings:
            self.report({"WARNING"}, w)
        self.report({"INFO"}, f"Imported {len(obj.data.vertices):,} splats from {os.path.basename(self.filepath)}")
        return {"FINISHED"}


@orientation_helper(axis_forward="Y", axis_up="Z")
class EXPORT_SCENE_OT_gaussian_splat(bpy.types.Operator, ExportHelper):
    """Export the active object's points and splat attributes as a 3D Gaussian Splatting PLY"""

    bl_idname = "export_scene.gaussian_splat"
    bl_label = "Export Gaussian Splat"
    bl_options = {"REGISTER"}

    filename_ext = ".ply"
    filter_glob: StringProperty(default="*.ply", options={"HIDDEN"})
    apply_transform: BoolProperty(name="Apply Transform", default=True,
                                  description="Write world-space positions, rotations and scales "
                                              "(the object's location, rotation and scale applied)")
    ascii: BoolProperty(name="ASCII", default=False, description="Write a text PLY (large and slow)")
    axis_preset: _axis_preset_prop()

    def draw(self, context):
        _draw_options(self, ("apply_transform", "ascii"))

    @classmethod
    def poll(cls, context):
        return context.active_object is not None

    def execute(self, context):
        obj = context.active_object
        try:
            forward, up = _axes(self)
            matrix = axis_conversion(to_forward=forward, to_up=up)
            count = splat_objects.export_splats(obj, self.filepath, apply_transform=self.apply_transform,
                                         format="ascii" if self.ascii else "binary_little_endian",
                                         axis_matrix=[list(row) for row in matrix])
        except (PlyError, splat_objects.SplatError) as exc:
            self.report({"ERROR"}, f"Cannot export splats: {exc}")
            return {"CANCELLED"}
        except OSError as exc:
            self.report({"ERROR"}, f"Cannot write {self.filepath}: {exc.strerror or exc}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Exported {count:,} splats to {os.path.basename(self.filepath)}")
        return {"FINISHED"}


def menu_import(self, context):
    self.layout.operator(IMPORT_SCENE_OT_gaussian_splat.bl_idname, text="Gaussian Splat (.ply)")


def menu_export(self, context):
    self.layout.operator(EXPORT_SCENE_OT_gaussian_splat.bl_idname, text="Gaussian Splat (.ply)")


classes = (IMPORT_SCENE_OT_gaussian_splat, EXPORT_SCENE_OT_gaussian_splat)


_register_classes, _unregister_classes = bpy.utils.register_classes_factory(classes)


def register():
    _register_classes()
    bpy.types.TOPBAR_MT_file_import.append(menu_import)
    bpy.types.TOPBAR_MT_file_export.append(menu_export)


def unregister():
    bpy.types.TOPBAR_MT_file_export.remove(menu_export)
    bpy.types.TOPBAR_MT_file_import.remove(menu_import)
    _unregister_classes()
