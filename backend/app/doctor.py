"""``python -m backend doctor``: what this backend can do on this machine, and what is missing."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import platform
import sys

from .. import __version__
from ..jobctl import Reporter
from ..protocol import ExitCode

PACKAGES = ("torch", "warp-lang", "gsplat", "diffusers", "transformers", "numpy")
OPTIONAL_PACKAGES = ("ray",)  # extras (requirements/ray.txt): reported, never a problem when absent


def package_versions(names=PACKAGES) -> dict:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_report() -> dict:
    info = {"cuda": False, "summary": "CPU only"}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info.update(cuda=True, gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                        summary=f"CUDA: {props.name} ({props.total_memory / 2**30:.0f} GB)")
    except ImportError:
        info["summary"] = "torch is not installed"
    try:
        import warp as wp

        wp.config.quiet = True
        wp.init()
        info["warp_devices"] = [str(d) for d in wp.get_devices()]
    except Exception as exc:  # warp missing or its runtime broken: report, don't crash the doctor
        info["warp_error"] = f"{type(exc).__name__}: {exc}"
    info["gsplat_cuda"] = gsplat_cuda_usable(info["cuda"])
    return info


def gsplat_cuda_usable(has_cuda: bool) -> str:
    """gsplat's rasteriser needs CUDA; on CPU the torch renderer is used instead (never gsplat's CUDA ops)."""
    if not has_cuda:
        return "no (no CUDA device: the torch CPU renderer is used)"
    try:
        from ..render.gsplat_private import cuda_extension

        return "yes" if cuda_extension() is not None else "no (the CUDA extension did not build)"
    except Exception as exc:
        return f"no ({type(exc).__name__}: {exc})"


def model_report(svd_model: str, modelscope_model: str) -> list:
    try:
        from ..prior import check_model
    except ImportError as exc:
        return [{"kind": k, "model": m, "ok": False, "message": f"prior module unavailable: {exc}"}
                for k, m in (("svd", svd_model), ("modelscope", modelscope_model))]
    out = []
    for kind, model in (("svd", svd_model), ("modelscope", modelscope_model)):
        ok, message = check_model(kind, model)
        out.append({"kind": kind, "model": model, "ok": bool(ok), "message": message})
    return out


def cmd_doctor(as_json: bool, svd_model: str, modelscope_model: str) -> int:
    events = sys.stdout
    sys.stdout = sys.stderr  # library chatter must not mix with the report
    try:
        packages = package_versions()
        report = {
            "backend_version": __version__,
            "python": platform.python_version(),
            "executable": sys.executable,
            "packages": packages,
            "optional": package_versions(OPTIONAL_PACKAGES),
            "device": device_report(),
            "models": model_report(svd_model, modelscope_model),
        }
        problems = [f"{name} is not installed" for name, v in packages.items() if v is None]
        problems += [f"{m['kind']} model: {m['message']}" for m in report["models"] if not m["ok"]]
        report["problems"] = problems
    finally:
        sys.stdout = events
    if as_json:
        Reporter(events).emit("result", stage="doctor", message="doctor report", data=report)
    else:
        print(format_report(report), file=events)
    missing_core = any(packages[p] is None for p in ("torch", "warp-lang", "numpy"))
    return ExitCode.MISSING_RESOURCE if missing_core else ExitCode.OK


def format_report(report: dict) -> str:
    dev = report["device"]
    lines = [
        f"Splat Physics backend {report['backend_version']} (Python {report['python']}, {report['executable']})",
        f"device:      {dev['summary']}",
        f"warp:        {', '.join(dev.get('warp_devices', [])) or dev.get('warp_error', '?')}",
        f"gsplat CUDA: {dev['gsplat_cuda']}",
        "packages:",
    ]
    lines += [f"  {k:<13}{v or 'MISSING'}" for k, v in report["packages"].items()]
    lines += [f"  {k:<13}{v or 'not installed (optional)'}" for k, v in report.get("optional", {}).items()]
    lines.append("video models:")
    for m in report["models"]:
        lines.append(f"  {m['kind']:<11}{'found  ' if m['ok'] else 'missing'} {m['model']}: {m['message']}")
    if report["problems"]:
        lines.append("problems:")
        lines += [f"  - {p}" for p in report["problems"]]
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(package_versions()))
