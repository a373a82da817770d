"""File > Import / Export > Gaussian Splat (.ply): thin operators over core.splats."""

import os

import bpy
from bpy.props import BoolProperty, FloatProperty, StringProperty
from bpy_extras.io_utils import ExportHelper, ImportHelper

from ..backend.io.ply import PlyError
from ..core import look, splats

# Above this many splats the viewport shows points (renders still get splats).
VIEWPORT_POINTS_ABOVE = 200_000


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

    def execute(self, context):
        warnings = []
        try:
            obj = splats.import_splats(self.filepath, context, look=False, warnings=warnings)
        except (PlyError, splats.SplatError) as exc:
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
        for view_layer_obj in context.view_layer.objects:
            view_layer_obj.select_set(False)
        if obj.name in context.view_layer.objects:
            obj.select_set(True)
            context.view_layer.objects.active = obj
        for w in warnings:
            self.report({"WARNING"}, w)
        self.report({"INFO"}, f"Imported {len(obj.data.vertices):,} splats from {os.path.basename(self.filepath)}")
        return {"FINISHED"}


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

    @classmethod
    def poll(cls, context):
        return context.active_object is not None

    def execute(self, context):
        obj = context.active_object
        try:
            count = splats.export_splats(obj, self.filepath, apply_transform=self.apply_transform,
                                         format="ascii" if self.ascii else "binary_little_endian")
        except (PlyError, splats.SplatError) as exc:
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
