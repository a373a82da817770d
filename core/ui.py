"""What panels and operators share: the object the UI acts on, and widgets both draw.

Panels and operators import from here, never from each other.
"""


def splat_object(context):
    """The splat object the UI acts on: the active mesh, or the target/parent of an active helper empty."""
    ob = context.active_object
    if ob is None:
        return None
    if ob.type == "MESH" and ob.splat_role.role == "NONE":
        return ob
    role = getattr(ob, "splat_role", None)
    if role is not None and role.target is not None:
        return role.target
    if ob.parent is not None and ob.parent.type == "MESH" and ob.parent.splat_physics.domain == ob:
        return ob.parent
    return None


def draw_stiffness(layout, data, value: str, unit: str) -> None:
    """Stiffness as a number and its pressure unit side by side (Blender has no pressure unit)."""
    row = layout.row(align=True)
    row.prop(data, value, text=f"Stiffness E ({getattr(data, unit)})")
    row.prop(data, unit, text="")
