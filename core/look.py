"""The splat look: a geometry-nodes group that instances one ellipsoid per point, and its material.

Node group ``SPLAT_Look`` (one per file, shared by every splat object; a modifier named "Splat Look"):

* each point becomes an instance of a low-poly icosphere of radius 1 whose transform is
  T(position) R(q) diag(s * k): R from the rotation quaternion, s the linear scales, k = "Splat Size"
  (default 2.5: the ellipsoid reaches 2.5 standard deviations, where the footprint has fallen to 4%;
  beyond that its contribution is small). Static splats read rot_0..3 (wxyz) and exp(scale_0..2);
  with "Baked Transform" on (and the attribute present) they read the bake's ``rotations``
  (QUATERNION) and linear ``scales`` (FLOAT_VECTOR) instead;
* colour = clamp(0.5 + C0 f_dc, 0, 1) (or ``heat_color`` when "Heat Map" is on and the attribute
  exists), alpha = sigmoid(opacity); both are stored on the points, reach the instances by
  propagation, and the material reads them with Attribute nodes of type INSTANCER;
* "Viewport Points" draws plain points in the viewport only (renders always get splats), so the
  viewport stays fast with a million splats;
* splats with alpha below "Min Opacity" are not instanced.

Material ``SPLAT_Material``: emission (the DC colour is display-referred, so it is linearised with a
2.2 gamma) mixed with a Transparent BSDF. The alpha is the Gaussian footprint along the view ray:
in the instance's own space the ellipsoid is the unit sphere, the ray's impact parameter b relative to
the centre follows from the normalised object coordinate p and the ray direction d as
b^2 = 1 - (p.d)^2, and the integrated Gaussian is exp(-k^2 b^2 / 2). Back faces are transparent so
each splat counts once. Works in Cycles and Eevee (in Cycles raise Light Paths > Transparent bounces
for dense scenes).
"""

from __future__ import annotations

import bpy

from ..backend.io import sh
from ..backend.io.ply import SH_C0

LOOK_GROUP = "SPLAT_Look"
MATERIAL_NAME = "SPLAT_Material"
LOOK_MODIFIER = "Splat Look"
LOOK_VERSION = 3  # 2: exact sRGB decoding, view-dependent colour; 3: baked splats lit at rest
ROLE_KEY = "splat_role"  # node-group custom property naming what the group does
DEFAULT_SPLAT_SIZE = 2.5
COLOR_ATTR, ALPHA_ATTR, SIGMA_ATTR = "splat_color", "splat_alpha", "splat_sigma"
HEAT_ATTR = "heat_color"
HEATMAP_PROP = "show_heatmap"

# group inputs: name -> (socket type, default, min, max, description)
LOOK_INPUTS = {
    "Splat Size": ("NodeSocketFloat", DEFAULT_SPLAT_SIZE, 0.1, 6.0, "Ellipsoid extent in standard deviations"),
    "Min Opacity": ("NodeSocketFloat", 1.0 / 255.0, 0.0, 1.0, "Splats fainter than this are not drawn"),
    "Detail": ("NodeSocketInt", 2, 1, 4, "Icosphere subdivisions of each splat"),
    "Baked Transform": ("NodeSocketBool", False, None, None, "Read the bake's rotations/scales attributes"),
    "Heat Map": ("NodeSocketBool", False, None, None, "Colour from the heat_color attribute"),
    "Viewport Points": ("NodeSocketBool", False, None, None, "Draw points in the viewport, splats in renders"),
    "View Colour": ("NodeSocketBool", False, None, None,
                    "View-dependent colour (SH degree 1-3) as seen from the scene's active camera"),
    "SH Degree": ("NodeSocketInt", 0, 0, 3, "Degree of the f_rest_* coefficients (set on import)"),
}


# ------------------------------------------------------------------------------------------ node building
class NodeBuilder:
    """Small helper over a node tree: create nodes with properties/defaults and link sockets."""

    def __init__(self, tree):
        self.tree = tree
        self.column = 0

    def node(self, idname: str, inputs: dict | None = None, label: str = "", **props):
        n = self.tree.nodes.new(idname)
        for key, value in props.items():
            setattr(n, key, value)
        n.location = (self.column * 200.0, -len(self.tree.nodes) * 8.0)
        self.column += 1
        if label:
            n.label = label
        for key, value in (inputs or {}).items():
            sock = self.inp(n, key)
            if hasattr(value, "is_output"):
                self.link(value, sock)
            else:
                sock.default_value = value
        return n

    @staticmethod
    def _find(sockets, key):
        if isinstance(key, int):
            return sockets[key]
        for s in sockets:
            if s.identifier == key and s.enabled:
                return s
        for s in sockets:
            if s.name == key and s.enabled:
                return s
        for s in sockets:
            if s.identifier == key or s.name == key:
                return s
        raise KeyError(f"no socket {key!r} among {[s.identifier for s in sockets]}")

    def inp(self, node, key):
        return self._find(node.inputs, key)

    def out(self, node, key=0):
        return self._find(node.outputs, key)

    def link(self, out_socket, in_socket):
        self.tree.links.new(out_socket, in_socket)

    # shorthands for geometry-node trees
    def math(self, op: str, a, b=None, c=None, clamp: bool = False):
        inputs = {0: a}
        if b is not None:
            inputs[1] = b
        if c is not None:
            inputs[2] = c
        return self.out(self.node("ShaderNodeMath", inputs, operation=op, use_clamp=clamp))

    def named(self, name: str, data_type: str = "FLOAT"):
        n = self.node("GeometryNodeInputNamedAttribute", {"Name": name}, data_type=data_type)
        return self.out(n, "Attribute"), self.out(n, "Exists")

    def switch(self, input_type: str, cond, false, true):
        n = self.node("GeometryNodeSwitch", input_type=input_type)
        for key, value in (("Switch", cond), ("False", false), ("True", true)):
            sock = self.inp(n, key)
            if hasattr(value, "is_output"):
                self.link(value, sock)
            else:
                sock.default_value = value
        return self.out(n)

    def bool_and(self, a, b):
        return self.out(self.node("FunctionNodeBooleanMath", {0: a, 1: b}, operation="AND"))

    def store(self, geometry, name: str, value, data_type: str, domain: str = "POINT"):
        n = self.node("GeometryNodeStoreNamedAttribute", {"Geometry": geometry, "Name": name},
                      data_type=data_type, domain=domain)
        self.link(value, self.inp(n, "Value"))
        return self.out(n)

    def sample_index(self, geometry, value, data_type: str, index=None):
        n = self.node("GeometryNodeSampleIndex", {"Geometry": geometry}, data_type=data_type, domain="POINT")
        self.link(value, self.inp(n, "Value"))
        idx = index if index is not None else self.out(self.node("GeometryNodeInputIndex"))
        self.link(idx, self.inp(n, "Index"))
        return self.out(n)


def new_group(name: str, role: str, version: int, inputs: dict | None = None, kind="GeometryNodeTree"):
    """Create (or rebuild in place, keeping its users) a node group with Geometry in/out and ``inputs``."""
    tree = bpy.data.node_groups.get(name)
    if tree is not None and tree.bl_idname == kind:
        tree.nodes.clear()
        tree.interface.clear()
    else:
        tree = bpy.data.node_groups.new(name, kind)
    tree.interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    for sname, (stype, default, lo, hi, desc) in (inputs or {}).items():
        item = tree.interface.new_socket(sname, in_out="INPUT", socket_type=stype)
        item.description = desc
        if default is not None:
            item.default_value = default
        if lo is not None:
            item.min_value = lo
        if hi is not None:
            item.max_value = hi
    tree.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    tree[ROLE_KEY] = role
    tree["splat_version"] = version
    return tree


def group_ready(name: str, role: str, version: int):
    tree = bpy.data.node_groups.get(name)
    if tree is not None and tree.get(ROLE_KEY) == role and tree.get("splat_version") == version:
        return tree
    return None


def input_identifier(tree, name: str) -> str:
    for item in tree.interface.items_tree:
        if getattr(item, "item_type", "") == "SOCKET" and item.in_out == "INPUT" and item.name == name:
            return item.identifier
    raise KeyError(f"node group {tree.name!r} has no input {name!r}")


def set_modifier_input(mod, name: str, value) -> None:
    mod[input_identifier(mod.node_group, name)] = value
    mod.id_data.update_tag()


def get_modifier_input(mod, name: str):
    return mod[input_identifier(mod.node_group, name)]


def set_wildcard(builder: NodeBuilder, remove_node) -> None:
    """Remove Named Attribute in wildcard mode: a node property in 4.5, a menu socket in 5.0."""
    if hasattr(remove_node, "pattern_mode"):
        remove_node.pattern_mode = "WILDCARD"
    else:
        builder.inp(remove_node, "Pattern Mode").default_value = "Wildcard"


# ------------------------------------------------------------------------------------------ material
def splat_material():
    """The shared splat material (created once per file)."""
    mat = bpy.data.materials.get(MATERIAL_NAME)
    if mat is not None and mat.get("splat_version") == LOOK_VERSION:
        return mat
    if mat is None:
        mat = bpy.data.materials.new(MATERIAL_NAME)
    if bpy.app.version < (5, 0, 0) or mat.node_tree is None:
        mat.use_nodes = True  # always on (and deprecated) from 5.0
    tree = mat.node_tree
    tree.nodes.clear()
    b = NodeBuilder(tree)

    def attr(name):
        return b.node("ShaderNodeAttribute", attribute_type="INSTANCER", attribute_name=name)

    colour = b.out(attr(COLOR_ATTR), "Color")
    alpha = b.out(attr(ALPHA_ATTR), "Fac")
    sigma = b.out(attr(SIGMA_ATTR), "Fac")
    linear = srgb_to_linear(b, colour)
    emission = b.out(b.node("ShaderNodeEmission", {"Color": linear, "Strength": 1.0}))
    transparent = b.out(b.node("ShaderNodeBsdfTransparent"))
    # ray geometry in the instance's own space, where the ellipsoid is the unit sphere
    geom = b.node("ShaderNodeNewGeometry")
    p = b.out(b.node("ShaderNodeVectorMath", {0: b.out(b.node("ShaderNodeTexCoord"), "Object")},
                     operation="NORMALIZE"))
    d_obj = b.out(b.node("ShaderNodeVectorTransform", {"Vector": b.out(geom, "Incoming")},
                         vector_type="VECTOR", convert_from="WORLD", convert_to="OBJECT"))
    d = b.out(b.node("ShaderNodeVectorMath", {0: d_obj}, operation="NORMALIZE"))
    cos = b.out(b.node("ShaderNodeVectorMath", {0: p, 1: d}, operation="DOT_PRODUCT"), "Value")
    b2 = b.math("SUBTRACT", 1.0, b.math("MULTIPLY", cos, cos), clamp=True)
    k2 = b.math("MULTIPLY", sigma, sigma)
    falloff = b.math("EXPONENT", b.math("MULTIPLY", b.math("MULTIPLY", k2, b2), -0.5))
    front = b.math("SUBTRACT", 1.0, b.out(geom, "Backfacing"))
    fac = b.math("MULTIPLY", b.math("MULTIPLY", alpha, falloff), front, clamp=True)
    mix = b.node("ShaderNodeMixShader", {0: fac, 1: transparent, 2: emission})
    b.node("ShaderNodeOutputMaterial", {"Surface": b.out(mix)})
    if hasattr(mat, "surface_render_method"):
        mat.surface_render_method = "DITHERED"
    if hasattr(mat, "use_backface_culling"):
        mat.use_backface_culling = True
    mat["splat_version"] = LOOK_VERSION
    return mat


def srgb_to_linear(b: NodeBuilder, colour):
    """The sRGB transfer function undone per channel (exact, not a 2.2 gamma): with the Standard view
    transform the rendered pixel then shows the file's display colour."""
    sep = b.node("ShaderNodeSeparateColor", {"Color": colour})
    comb = b.node("ShaderNodeCombineColor")
    for key in ("Red", "Green", "Blue"):
        c = b.out(sep, key)
        low = b.math("DIVIDE", c, 12.92)
        high = b.math("POWER", b.math("DIVIDE", b.math("ADD", c, 0.055), 1.055), 2.4)
        is_low = b.math("LESS_THAN", c, 0.04045)
        b.link(b.math("MULTIPLY_ADD", is_low, b.math("SUBTRACT", low, high), high), b.inp(comb, key))
    return b.out(comb)


# ------------------------------------------------------------------------------------------ view colour
def _sh_basis(b: NodeBuilder, d) -> list:
    """Fields of the 15 bases beyond DC (3DGS order and constants, backend/io/sh.py) at unit direction d."""
    x, y, z = (b.out(d, k) for k in ("X", "Y", "Z"))
    def mul(a, c):
        return b.math("MULTIPLY", a, c)

    xx, yy, zz, xy, yz, xz = mul(x, x), mul(y, y), mul(z, z), mul(x, y), mul(y, z), mul(x, z)
    c1, c2, c3 = sh.SH_C1, sh.SH_C2, sh.SH_C3
    xx_plus_yy = b.math("ADD", xx, yy)
    xx_minus_yy = b.math("SUBTRACT", xx, yy)
    four_zz_minus = b.math("SUBTRACT", mul(zz, 4.0), xx_plus_yy)  # 4zz - xx - yy
    return [
        mul(y, -c1), mul(z, c1), mul(x, -c1),
        mul(xy, c2[0]), mul(yz, c2[1]), mul(b.math("SUBTRACT", mul(zz, 2.0), xx_plus_yy), c2[2]), mul(xz, c2[3]),
        mul(xx_minus_yy, c2[4]),
        mul(mul(y, b.math("SUBTRACT", mul(xx, 3.0), yy)), c3[0]), mul(mul(xy, z), c3[1]),
        mul(mul(y, four_zz_minus), c3[2]),
        mul(mul(z, b.math("SUBTRACT", mul(zz, 2.0), mul(xx_plus_yy, 3.0))), c3[3]),
        mul(mul(x, four_zz_minus), c3[4]), mul(mul(z, xx_minus_yy), c3[5]),
        mul(mul(x, b.math("SUBTRACT", xx, mul(yy, 3.0))), c3[6]),
    ]


def _view_colours(b: NodeBuilder, dc: list, rest_rotation, baked_rotation, use_baked) -> list:
    """Colour fields for SH degree 0..3 seen from the active camera: clamp(SH_C0 f_dc + 0.5 + sum f_rest Y).

    The direction is camera -> point in the object's own space (the camera's Object Info is relative to
    the modified object), the frame the coefficients were imported in. A baked (simulated) splat turned
    from its rest rotation R0 to R is lit as at rest: its SH is looked up along R0 R^T d, as the backend's
    renderer does (backend/render/sh.py)."""
    cam = b.node("GeometryNodeInputActiveCamera")
    info = b.node("GeometryNodeObjectInfo", {"Object": b.out(cam)}, transform_space="RELATIVE")
    pos = b.out(b.node("GeometryNodeInputPosition"))
    rel = b.out(b.node("ShaderNodeVectorMath", {0: pos, 1: b.out(info, "Location")}, operation="SUBTRACT"))
    unit = b.out(b.node("ShaderNodeVectorMath", {0: rel}, operation="NORMALIZE"))
    back = b.out(b.node("FunctionNodeRotateVector", {
        "Vector": unit, "Rotation": b.out(b.node("FunctionNodeInvertRotation", {"Rotation": baked_rotation}))}))
    at_rest = b.out(b.node("FunctionNodeRotateVector", {"Vector": back, "Rotation": rest_rotation}))
    unit = b.switch("VECTOR", use_baked, unit, at_rest)
    basis = _sh_basis(b, b.node("ShaderNodeSeparateXYZ", {0: unit}))
    colours = []
    for degree in range(sh.MAX_DEGREE + 1):
        k = sh.rest_count(degree)
        rgb = b.node("FunctionNodeCombineColor", {"Alpha": 1.0})
        for c, key in enumerate(("Red", "Green", "Blue")):
            value = dc[c]
            for j in range(k):
                value = b.math("MULTIPLY_ADD", b.named(f"f_rest_{c * k + j}")[0], basis[j], value)
            b.link(b.math("ADD", value, 0.0, clamp=True), b.inp(rgb, key))
        colours.append(b.out(rgb))
    return colours


# ------------------------------------------------------------------------------------------ look group
def look_group():
    """The shared SPLAT_Look geometry-nodes group (built on first use, rebuilt when outdated)."""
    tree = group_ready(LOOK_GROUP, "look", LOOK_VERSION)
    if tree is not None:
        return tree
    material = splat_material()
    tree = new_group(LOOK_GROUP, "look", LOOK_VERSION, LOOK_INPUTS)
    b = NodeBuilder(tree)
    gi = b.node("NodeGroupInput")
    geo = b.out(gi, "Geometry")

    def group_in(name):
        return b.out(gi, name)

    # transform: static PLY attributes or the bake's rotations/scales
    rot_static = b.out(b.node("FunctionNodeQuaternionToRotation", {
        key: b.named(f"rot_{i}")[0] for i, key in enumerate("WXYZ")}))
    scale_static = b.out(b.node("ShaderNodeCombineXYZ", {
        key: b.math("EXPONENT", b.named(f"scale_{i}")[0]) for i, key in enumerate("XYZ")}))
    rot_baked, has_baked = b.named("rotations", "QUATERNION")
    scale_baked, _ = b.named("scales", "FLOAT_VECTOR")
    use_baked = b.bool_and(group_in("Baked Transform"), has_baked)
    rotation = b.switch("ROTATION", use_baked, rot_static, rot_baked)
    scale = b.switch("VECTOR", use_baked, scale_static, scale_baked)
    scale = b.out(b.node("ShaderNodeVectorMath", {0: scale, "Scale": group_in("Splat Size")}, operation="SCALE"))

    # colour and alpha: the DC colour, or with View Colour on, SH of the object's degree from the active camera
    dc = [b.math("MULTIPLY_ADD", b.named(f"f_dc_{i}")[0], SH_C0, 0.5) for i in range(3)]
    choose = b.node("GeometryNodeIndexSwitch", data_type="RGBA")
    while len(choose.index_switch_items) < sh.MAX_DEGREE + 1:
        choose.index_switch_items.new()
    for degree, value in enumerate(_view_colours(b, dc, rot_static, rot_baked, use_baked)):
        b.link(value, choose.inputs[degree + 1])
    degree = b.switch("INT", group_in("View Colour"), 0, group_in("SH Degree"))
    b.link(degree, b.inp(choose, "Index"))
    heat, has_heat = b.named(HEAT_ATTR, "FLOAT_COLOR")
    colour = b.switch("RGBA", b.bool_and(group_in("Heat Map"), has_heat), b.out(choose), heat)
    opacity = b.named("opacity")[0]
    alpha = b.math("DIVIDE", 1.0, b.math("ADD", 1.0, b.math("EXPONENT", b.math("MULTIPLY", opacity, -1.0))),
                   clamp=True)
    pts = b.store(geo, COLOR_ATTR, colour, "FLOAT_COLOR")
    pts = b.store(pts, ALPHA_ATTR, alpha, "FLOAT")
    pts = b.store(pts, SIGMA_ATTR, group_in("Splat Size"), "FLOAT")
    remove = b.node("GeometryNodeRemoveAttribute", {"Geometry": pts, "Name": "f_rest_*"})
    set_wildcard(b, remove)
    pts = b.out(remove)

    # instances
    ico = b.node("GeometryNodeMeshIcoSphere", {"Radius": 1.0, "Subdivisions": group_in("Detail")})
    smooth = b.node("GeometryNodeSetShadeSmooth", {0: b.out(ico, "Mesh")})
    shape = b.out(b.node("GeometryNodeSetMaterial", {0: b.out(smooth), "Material": material}))
    visible = b.out(b.node("FunctionNodeCompare", {"A": alpha, "B": group_in("Min Opacity")},
                           data_type="FLOAT", operation="GREATER_EQUAL"))
    inst = b.out(b.node("GeometryNodeInstanceOnPoints", {
        "Points": pts, "Selection": visible, "Instance": shape, "Rotation": rotation, "Scale": scale}))

    # viewport points (render always gets the splats)
    radius = b.math("MULTIPLY", b.out(b.node("ShaderNodeVectorMath", {0: scale}, operation="LENGTH"), "Value"),
                    0.577)
    points = b.out(b.node("GeometryNodeMeshToPoints", {"Mesh": pts, "Radius": radius}))
    viewport = b.bool_and(b.out(b.node("GeometryNodeIsViewport")), group_in("Viewport Points"))
    result = b.switch("GEOMETRY", viewport, inst, points)
    b.node("NodeGroupOutput", {"Geometry": result})
    return tree


# ------------------------------------------------------------------------------------------ object API
def is_look_modifier(mod) -> bool:
    return mod.type == "NODES" and mod.node_group is not None and mod.node_group.get(ROLE_KEY) == "look"


def look_modifier(obj):
    return next((m for m in obj.modifiers if is_look_modifier(m)), None)


def sh_degree(obj) -> int:
    """SH degree of the object's f_rest_* attributes (0 without them or with an unusual count)."""
    count = sum(1 for a in obj.data.attributes if a.name.startswith("f_rest_") and a.name[7:].isdigit())
    try:
        return sh.degree_of(count)
    except ValueError:
        return 0


def set_view_colour(obj, enabled: bool) -> None:
    """Render view-dependent colour (SH 1-3) from the active camera, or the flat DC colour."""
    mod = look_modifier(obj)
    if mod is None:
        raise ValueError(f"'{obj.name}' has no splat look")
    set_modifier_input(mod, "SH Degree", sh_degree(obj))
    set_modifier_input(mod, "View Colour", bool(enabled))


def apply_splat_look(obj, source: str = "attributes", splat_size: float | None = None):
    """Add (or update) the splat look modifier, last in the stack. Returns the modifier.

    source="attributes": rot_0..3 / scale_0..2 of the points (imported, static splats or the PLY-sequence
    bake); source="bake": the ``rotations``/``scales`` attributes written by a GN-cache bake.
    """
    if source not in ("attributes", "bake"):
        raise ValueError(f"source must be 'attributes' or 'bake', got {source!r}")
    if obj is None or obj.type != "MESH":
        raise ValueError(f"'{getattr(obj, 'name', obj)}' is not a mesh object")
    group = look_group()
    mod = look_modifier(obj)
    if mod is None:
        mod = obj.modifiers.new(LOOK_MODIFIER, "NODES")
        mod.node_group = group
    elif mod.node_group is not group:
        mod.node_group = group
    move_to_end(obj, mod)
    set_modifier_input(mod, "Baked Transform", source == "bake")
    set_modifier_input(mod, "SH Degree", sh_degree(obj))
    if splat_size is not None:
        set_modifier_input(mod, "Splat Size", float(splat_size))
    if obj.get(HEATMAP_PROP):
        set_modifier_input(mod, "Heat Map", True)
    return mod


def move_to_end(obj, mod) -> None:
    idx = list(obj.modifiers).index(mod)
    last = len(obj.modifiers) - 1
    if idx != last:
        obj.modifiers.move(idx, last)


def set_splat_display(obj, mode: str) -> None:
    """'POINTS': points in the viewport (fast for millions), splats in renders; 'SPLATS': splats everywhere."""
    if mode not in ("POINTS", "SPLATS"):
        raise ValueError(f"mode must be 'POINTS' or 'SPLATS', got {mode!r}")
    mod = look_modifier(obj) or apply_splat_look(obj)
    set_modifier_input(mod, "Viewport Points", mode == "POINTS")


def splat_display(obj) -> str:
    mod = look_modifier(obj)
    return "POINTS" if mod is not None and get_modifier_input(mod, "Viewport Points") else "SPLATS"


def set_heatmap_visible(obj, visible: bool) -> None:
    """Show the ``heat_color`` point attribute instead of the splat colours (when it exists)."""
    obj[HEATMAP_PROP] = bool(visible)
    mod = look_modifier(obj)
    if mod is not None:
        set_modifier_input(mod, "Heat Map", bool(visible))


def heatmap_visible(obj) -> bool:
    return bool(obj.get(HEATMAP_PROP, False))
