"""Add-on preferences: where the backend lives, which device it uses, where the video models are."""

import bpy

from .backend import protocol
from .backend.client import registry



def get_prefs(context=None):
    context = context or bpy.context
    addon = context.preferences.addons.get(__package__)
    return addon.preferences if addon else None


def configured_python(context=None) -> str:
    """The Backend Python the preferences name, as an absolute path; '' when none is set."""
    prefs = get_prefs(context)
    return bpy.path.abspath(prefs.backend_python) if prefs and prefs.backend_python.strip() else ""


def chosen_device(context=None) -> str:
    """The Device preference ('auto', 'cpu' or 'cuda'); 'auto' without preferences (not registered)."""
    prefs = get_prefs(context)
    return prefs.device if prefs else "auto"


class SPLAT_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    backend_python: bpy.props.StringProperty(
        name="Backend Python",
        description="Python interpreter of the backend environment (torch, warp, gsplat, diffusers). "
        "Use Install Backend to create one",
        subtype="FILE_PATH",
    )
    device: bpy.props.EnumProperty(
        name="Device",
        items=[
            ("auto", "Auto", "CUDA when the backend sees a GPU, otherwise the CPU"),
            ("cuda", "CUDA", "Require a CUDA GPU; fail with a clear message if there is none"),
            ("cpu", "CPU", "Always the CPU (slow for estimation, fine for small bakes)"),
        ],
        default="auto",
    )
    svd_model: bpy.props.StringProperty(
        name="SVD model", default=protocol.DEFAULT_MODELS["svd"],
        description="Hugging Face hub id or local folder of Stable Video Diffusion (img2vid or img2vid-xt)",
    )
    modelscope_model: bpy.props.StringProperty(
        name="Text-to-video model", default=protocol.DEFAULT_MODELS["modelscope"],
        description="Hugging Face hub id or local folder of the ModelScope text-to-video model",
    )
    install_ray: bpy.props.BoolProperty(
        name="Include Ray", default=False,
        description="Also install Ray (requirements/ray.txt), to run many job folders on this machine or a "
        "cluster with 'python -m backend batch' (see Write Jobs for a Farm)",
    )
    doctor_report: bpy.props.StringProperty(name="Backend report", default="")
    # What Check Backend found, for the panel's guidance and the estimation defaults under Auto.
    found_device: bpy.props.EnumProperty(
        name="Found device", default="unknown",
        items=[("unknown", "Not checked", ""), ("cpu", "CPU", ""), ("cuda", "CUDA", "")])
    found_gpu: bpy.props.StringProperty(name="GPU", default="")
    found_models: bpy.props.StringProperty(name="Models found", default="", description="e.g. 'svd,modelscope'")
    install_message: bpy.props.StringProperty(name="Install status", default="")

    def draw(self, context):
        layout = self.layout
        col = layout.column()
        col.prop(self, "backend_python")
        row = col.row(align=True)
        row.operator("splat.check_backend", icon="CHECKMARK")
        row.operator("splat.install_backend", icon="IMPORT")
        col.prop(self, "install_ray")
        job = registry.active("install")
        if job is not None:
            col.progress(text=job.runner.stage_message or "Installing…", factor=job.runner.fraction, type="BAR")
            col.operator("splat.cancel_job", text="Cancel install", icon="CANCEL").kind = "install"
        elif self.install_message:
            col.label(text=self.install_message)
        if self.doctor_report:
            box = col.box()
            for line in self.doctor_report.splitlines()[:30]:
                box.label(text=line)
        col.separator()
        col.prop(self, "device")
        col.prop(self, "svd_model")
        col.prop(self, "modelscope_model")


classes = (SPLAT_AP_preferences,)


register, unregister = bpy.utils.register_classes_factory(classes)
