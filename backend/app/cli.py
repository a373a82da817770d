"""Command line: ``python -m backend run <job> | batch <jobs> | doctor | install <dir> | demo``.

Everything up to the job's validation uses only the standard library and numpy, so a bad job is
reported in a fraction of a second with one message and its exit code; torch, warp and diffusers
load only once the job is known to be good.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import sys
from pathlib import Path

from .. import protocol
from ..jobctl import CancelToken, JobLock, Reporter, log, setup_logging
from ..protocol import ExitCode, JobError, MissingResource


def main(argv: list[str] | None = None) -> int:
    # On small shared machines OpenMP threads that spin while waiting make torch many times slower;
    # passive waiting costs nothing when the machine is idle. Must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = argparse.ArgumentParser(prog="python -m backend", description="Splat Physics backend")
    sub = parser.add_subparsers(dest="command", required=True)

    p_run = sub.add_parser("run", help="run a job folder (job.json + scene.npz)")
    p_run.add_argument("job_dir")
    p_run.add_argument("--verbose", action="store_true")

    p_doc = sub.add_parser("doctor", help="report devices, package versions and model availability")
    p_doc.add_argument("--json", action="store_true", help="emit the report as a progress 'result' event")
    p_doc.add_argument("--svd-model", default=protocol.DEFAULT_MODELS["svd"])
    p_doc.add_argument("--modelscope-model", default=protocol.DEFAULT_MODELS["modelscope"])

    p_inst = sub.add_parser("install", help="create a backend environment (stdlib only; used by the add-on)")
    p_inst.add_argument("env_dir")
    p_inst.add_argument("--requirements", required=True, action="append", type=Path,
                        help="a requirements file; repeat it for extras (requirements/ray.txt)")

    p_demo = sub.add_parser("demo", help="headless demo on the bundled sample: estimate, poke, simulate, preview")
    p_demo.add_argument("--out", default="demo_out/backend")
    p_demo.add_argument("--quick", action="store_true")

    p_batch = sub.add_parser("batch", help="run many job folders on Ray (local, or a cluster with --address)",
                             description="Run job folders on Ray. Job folders must be on storage every worker "
                                         "sees, at the same path; each worker checks it before a job starts.")
    from .batch import add_arguments

    add_arguments(p_batch)

    args = parser.parse_args(argv)
    # Each command imports what it needs when it runs: `run` refuses a bad job before torch or warp loads.
    if args.command == "run":
        return cmd_run(Path(args.job_dir), verbose=args.verbose)
    if args.command == "doctor":
        from .doctor import cmd_doctor

        return cmd_doctor(args.json, args.svd_model, args.modelscope_model)
    if args.command == "install":
        from .install import cmd_install

        return cmd_install(Path(args.env_dir), args.requirements)
    if args.command == "batch":
        from .batch import cmd_batch

        return cmd_batch(args)
    if args.command == "demo":
        from .demo import cmd_demo

        return cmd_demo(Path(args.out), quick=args.quick)
    return ExitCode.BAD_INPUT


def cmd_run(job_dir: Path, verbose: bool = False) -> int:
    # stdout carries only events; anything a library prints goes to stderr (the log).
    events_stream = sys.stdout
    sys.stdout = sys.stderr
    reporter = Reporter(events_stream)
    setup_logging(verbose=verbose)
    lock = None
    try:
        reporter.current = "reading the job"
        job = protocol.read_job(job_dir)
        reporter.current = "reading the scene"
        scene = protocol.load_npz(job.scene_path)
        n = protocol.validate_scene(scene)
        protocol.check_scene_fits(job, scene)
        protocol.check_output_tree(job.output_dir)
        reporter.current = "preparing the job folder"
        lock = JobLock(job.folder)
        took_over = lock.acquire()
        job.output_dir.mkdir(parents=True, exist_ok=True)
        setup_logging(job.output_dir / protocol.LOG_FILE, verbose=verbose)
        token = CancelToken(job.cancel_path)
        job.cancel_path.unlink(missing_ok=True)  # a stale request from an earlier run
        token.install_signal_handlers()
        protocol.remove_temp_files(job.output_dir)
        (job.output_dir / protocol.RESULT_FILE).unlink(missing_ok=True)  # written last, on success only
        reporter.emit("start", stage=job.command, message=f"{job.command}: {n} points", data={"n_points": n})
        if took_over:
            reporter.warning(took_over[:1].upper() + took_over[1:])
        result = _dispatch(job, scene, reporter, token)
        reporter.current = "writing the result"
        protocol.atomic_write_json(job.output_dir / protocol.RESULT_FILE, result)
        reporter.emit("result", stage=job.command, message="finished", data=result)
        return ExitCode.OK
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one message and an exit code
        error = explain(exc, reporter.current)
        if error is None:
            raise  # KeyboardInterrupt/SystemExit outside the cancel handling: not ours to swallow
        if error.exit_code == ExitCode.INTERNAL:  # a bug: full traceback into the log
            log.error("internal error while %s", reporter.current, exc_info=exc)
        else:  # one line, no traceback: the message is the whole story
            print(f"error: {error.message}", file=sys.stderr)
        reporter.emit("error", message=error.message, data={"exit_code": int(error.exit_code)})
        return error.exit_code
    finally:
        if lock is not None:
            lock.release()
        sys.stdout = events_stream


def explain(exc: BaseException, doing: str) -> JobError | None:
    """The user's words and exit code for a failure; None for interrupts that must propagate."""
    if isinstance(exc, JobError):
        return exc
    if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
        return None
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or _OOM_TEXT.search(str(exc)):
        return MissingResource(f"Out of memory while {doing}. Use fewer points (estimate.max_particles), a coarser "
                               "grid (simulation.n_grid, simulation.fill.resolution) or a machine with more memory")
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
        return MissingResource(f"The disk is full (while {doing}{_on(exc)}). Free some space and run the job "
                               "again; it resumes where it stopped")
    if isinstance(exc, OSError) and exc.errno in _NOT_ALLOWED:
        return protocol.BadJob(f"No permission for{_on(exc)} while {doing} ({exc.strerror}). The job folder must be "
                               "writable and its inputs readable; copy the job to a folder you own")
    if isinstance(exc, RecursionError):
        return protocol.BadJob(f"The input is nested too deeply to read (while {doing})")
    return JobError(f"Internal error while {doing} ({type(exc).__name__}: {exc}). The log has the details.")


# How torch (CUDA), warp and the C library word an allocation failure that reaches us as another exception.
_OOM_TEXT = re.compile(r"out of memory|failed to allocate|cannot allocate memory", re.IGNORECASE)
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NOT_ALLOWED = {errno.EACCES, errno.EPERM, errno.EROFS}


def _on(exc: OSError) -> str:
    return f" {exc.filename}" if exc.filename else ""


def _dispatch(job: protocol.Job, scene: dict, reporter: Reporter, token: CancelToken) -> dict:
    # The jobs load the compute stack; only a job that passed validation gets here.
    from ..jobs.device import resolve_device

    device = resolve_device(job.device)
    if job.command == "simulate":
        from ..jobs.simulate import run_simulate

        return run_simulate(job, scene, reporter, token, device)
    if job.command == "estimate":
        from ..jobs.estimate import run_estimate

        return run_estimate(job, scene, reporter, token, device)
    if job.command == "preview":
        from ..jobs.preview import run_preview

        return run_preview(job, scene, reporter, token, device)
    raise protocol.BadJob(f"unknown command {job.command!r}")


if __name__ == "__main__":
    logging.basicConfig()
    sys.exit(main())
