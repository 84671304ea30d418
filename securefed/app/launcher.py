"""Running an experiment: Flower's simulation engine, or the in-process grid.

``run_simulation`` drives real Flower for the user, the way ``flwr run`` would, but
owns every process it starts:

1. it writes a tiny Flower app folder into the run directory whose
   ``[tool.flwr.app.config]`` points at the resolved securefed config;
2. it gives the run its own ``FLWR_HOME`` with a connection to a SuperLink it starts
   itself (``flower-superlink --simulation`` on free loopback ports, runtime
   dependency installation, update checks and telemetry off);
3. it runs ``flwr run <app> securefed --stream`` and tees the log to
   ``flower.log``;
4. it stops the ``flwr run`` process and the SuperLink (with the simulation process
   it spawned) **by PID / process group**, also on Ctrl-C, SIGTERM or an error.

``run_inprocess`` runs the same ServerApp and ClientApp code through
:class:`securefed.app.grid.InProcessGrid`, for tests and fast sweeps.

Both refuse a run directory that holds files unless ``overwrite=True``, which clears
it first (:func:`securefed.rundir.prepare_run_dir`), and both end every run with
``manifest.json``. SIGINT and SIGTERM (:func:`signals_as_interrupts`) stop every
process, then ``summary.json`` records ``status = "interrupted"`` with the last
completed round (:func:`securefed.rundir.mark_interrupted`) and :class:`Interrupted`
propagates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import tomli_w

from securefed.app.logs import pythonwarnings, route_logs
from securefed.app.nodes import NODE_CONFIG_DIR_ENV, prepare_node_configs
from securefed.config import ExperimentConfig
from securefed.exceptions import SecurefedError
from securefed.rundir import mark_interrupted, prepare_run_dir, write_manifest

if TYPE_CHECKING:
    from securefed.app.plan import RunPlan

__all__ = ["Interrupted", "RunFailedError", "interrupt_signal", "preflight", "run_inprocess",
           "run_simulation", "signals_as_interrupts", "stop_process_group"]

FLOWER_LOG = "flower.log"


class RunFailedError(SecurefedError):
    """A federated run ended without a completed ``summary.json``."""


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal (SIGINT or SIGTERM).

    Parameters
    ----------
    signum : int
        The signal; a shell reports the exit status ``128 + signum``.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


def interrupt_signal(exc: BaseException) -> int:
    """The signal behind a KeyboardInterrupt (a plain one is Ctrl-C: SIGINT)."""
    return int(getattr(exc, "signum", signal.SIGINT))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RunFailedError(f"flower-superlink exited early with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.2)
    raise RunFailedError(f"flower-superlink did not open port {port} within {timeout:.0f} s")


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def stop_process_group(proc: subprocess.Popen[Any], *, grace: float = 10.0) -> None:
    """Stop ``proc`` and every process it spawned, identified by PID and session id.

    Flower's SuperLink starts SuperExec and the simulation runtime in sessions of
    their own, and Ray's agents outlive their raylet by a moment, so signalling one
    group is not enough. Before anything is signalled, the descendants are listed (by
    PID, via psutil) together with the sessions they belong to; then SIGTERM goes to
    ``proc``'s group, and after ``grace`` seconds whatever still runs in the listed
    PIDs or sessions is terminated, then killed. Our own session is never touched, and
    nothing is ever killed by name.
    """
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    own = _session(0)
    sessions = {s for s in (_session(p.pid) for p in family) if s is not None} | {proc.pid}
    if own is not None:
        sessions.discard(own)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    psutil.wait_procs(family, timeout=grace)
    me = os.getpid()
    left = {p.pid: p for p in family if p.is_running()}
    for p in psutil.process_iter():
        if p.pid != me and _session(p.pid) in sessions:
            left.setdefault(p.pid, p)
    for p in left.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(list(left.values()), timeout=3)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)


def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def _flower_env(flwr_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        FLWR_HOME=str(flwr_home),
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        PYTHONUNBUFFERED="1",
        PYTHONWARNINGS=pythonwarnings(env.get("PYTHONWARNINGS", "")),
    )
    return env


def _write_app(app_dir: Path, config_file: Path, run_dir: Path) -> None:
    app_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "project": {"name": "securefed-run", "version": "1.0.0",
                    "description": "securefed experiment", "dependencies": []},
        "tool": {"flwr": {"app": {
            "publisher": "securefed",
            "components": {"serverapp": "securefed.app.server_app:app",
                           "clientapp": "securefed.app.client_app:app"},
            "config": {"config-file": str(config_file), "run-dir": str(run_dir)},
        }}},
    }
    (app_dir / "pyproject.toml").write_text(tomli_w.dumps(doc))


def _write_connection(flwr_home: Path, port: int) -> None:
    flwr_home.mkdir(parents=True, exist_ok=True)
    doc = {"superlink": {
        "default": "securefed",
        "securefed": {"address": f"127.0.0.1:{port}", "insecure": True},
    }}
    (flwr_home / "config.toml").write_text(tomli_w.dumps(doc))


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """New session, and SIGTERM when the parent dies (Linux ``PR_SET_PDEATHSIG``).

    A safety net: if the driving process is killed outright (SIGKILL, a CI timeout),
    the SuperLink it started still shuts down, and it stops its own SuperExec.
    """
    os.setsid()
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into :class:`Interrupted` while the body runs (main
    thread only), so that ``finally`` blocks stop every Flower process.

    Only the first signal raises: one that arrives while the body is already unwinding
    (a second Ctrl-C during clean-up) is ignored, so the clean-up is never cut short.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if fired:
            return
        fired.append(signum)
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _run_dir_lifecycle(run_dir: Path) -> Iterator[None]:
    """Around a run whose processes have all stopped when the body exits: on an
    interrupt, record it in ``summary.json``; in any case write ``manifest.json``."""
    try:
        yield
    except KeyboardInterrupt as exc:
        mark_interrupted(run_dir, interrupt_signal(exc))
        raise
    finally:
        write_manifest(run_dir)


@contextlib.contextmanager
def _superlink(run_dir: Path, env: dict[str, str], *, simulation: bool = True) -> Iterator[int]:
    """A SuperLink on a free loopback port (simulation engine, or deployment mode for
    SuperNodes), stopped by PID on exit."""
    # Flower 1.41 serves the Runtime, Control and Fleet APIs on one HTTP port.
    port = _free_port()
    mode = ["--simulation"] if simulation else []
    cmd = [_bin("flower-superlink"), "--insecure", *mode, "--isolation", "subprocess",
           "--host", "127.0.0.1", "--port", str(port),
           "--disable-runtime-dependency-installation",
           "--log-file", str(run_dir / "superlink.log")]
    with (run_dir / "superlink.out").open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    (run_dir / "superlink.pid").write_text(str(proc.pid))
    try:
        _wait_port(port, proc, timeout=60)
        yield port
    finally:
        stop_process_group(proc)


def preflight(config: ExperimentConfig, *, engine: str = "simulation") -> RunPlan:
    """Every check before any process starts (:func:`securefed.app.check.check_config`).

    Resources, plug-in names, modality, partitions, replies, the secure and the DP
    plans, so that a typo or an impossible setting never costs a Flower start-up.
    Returns the run's :class:`~securefed.app.plan.RunPlan`.
    """
    from securefed.app.check import check_config

    return check_config(config, engine=engine)


def _node_config_dir(config: ExperimentConfig, run_dir: Path) -> str:
    """Write the nodes' own configs (roster, CKKS policy) for a simulation; the folder
    the simulated nodes read them from (:mod:`securefed.app.nodes`), or "" if none."""
    prepare_node_configs(config, run_dir)
    folder = run_dir / "nodes"
    return str(folder) if folder.is_dir() else ""


def run_simulation(
    config: ExperimentConfig,
    run_dir: Path,
    *,
    on_line: Callable[[str], None] | None = None,
    num_cpus: int | None = None,
    timeout_s: float | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run ``config`` on Flower's simulation engine; return the run's summary.

    Parameters
    ----------
    config : ExperimentConfig
        The validated experiment.
    run_dir : Path
        Output directory; receives ``config.toml``, Flower logs and all run outputs.
    on_line : callable, optional
        Called with every line Flower prints (for progress display).
    num_cpus : int, optional
        CPUs Ray reserves per virtual client; overrides ``[resources] client_cpus``
        (2 on a 2-core machine = one at a time). GPUs: ``[resources] client_gpus``.
    timeout_s : float, optional
        Stop everything and fail after this many seconds.
    overwrite : bool
        Clear ``run_dir`` if it holds an earlier run (otherwise a non-empty
        ``run_dir`` is refused).

    Raises
    ------
    RunDirError
        If ``run_dir`` holds files and ``overwrite`` is not set, or is not a run folder.
    RunFailedError
        If Flower exits without a completed ``summary.json``; the message holds the
        tail of ``flower.log``.
    Interrupted
        On SIGINT or SIGTERM, after every process stopped and ``summary.json`` recorded
        the interruption (a plain KeyboardInterrupt where no handler could be set).
    """
    if num_cpus is not None:
        config = dataclasses.replace(config, resources=dataclasses.replace(
            config.resources, client_cpus=num_cpus))
    preflight(config)
    run_dir = prepare_run_dir(run_dir, overwrite=overwrite)
    with signals_as_interrupts(), _run_dir_lifecycle(run_dir):
        _simulate(config, run_dir, on_line=on_line, timeout_s=timeout_s)
        return _read_summary(run_dir, run_dir / FLOWER_LOG)


def _simulate(config: ExperimentConfig, run_dir: Path, *,
              on_line: Callable[[str], None] | None,
              timeout_s: float | None) -> None:
    """The body of :func:`run_simulation`: every process it starts is stopped on exit."""
    config_file = run_dir / "config.toml"
    config_file.write_text(tomli_w.dumps(config.to_dict()))
    app_dir = run_dir / "flwr-app"
    _write_app(app_dir, config_file, run_dir)
    flwr_home = run_dir / ".flwr"
    env = _flower_env(flwr_home)
    env[NODE_CONFIG_DIR_ENV] = _node_config_dir(config, run_dir)
    log_path = run_dir / FLOWER_LOG
    with route_logs(log_path, app_loggers=False), _superlink(run_dir, env) as port:
        _write_connection(flwr_home, port)
        res = config.resources
        federation = (f"num-supernodes={config.data.num_clients} "
                      f"client-resources-num-cpus={res.client_cpus} "
                      f"client-resources-num-gpus={float(res.client_gpus)}")
        cmd = [_bin("flwr"), "run", str(app_dir), "securefed", "--stream",
               "--federation-config", federation]
        with log_path.open("a", encoding="utf-8") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, text=True, bufsize=1)
            deadline = time.monotonic() + timeout_s if timeout_s else None
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    log.write(line)
                    log.flush()
                    if on_line is not None:
                        on_line(line.rstrip("\n"))
                    if deadline and time.monotonic() > deadline:
                        raise RunFailedError(f"run exceeded {timeout_s:.0f} s")
                    if _finished(run_dir):
                        break
                proc.wait(timeout=30)
            finally:
                stop_process_group(proc)


def _finished(run_dir: Path) -> bool:
    path = run_dir / "summary.json"
    return path.is_file() and path.stat().st_size > 0


def _read_summary(run_dir: Path, log_path: Path) -> dict[str, Any]:
    path = run_dir / "summary.json"
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:]) \
        if log_path.exists() else ""
    if not path.is_file():
        raise RunFailedError(f"Flower run ended without a summary; see {log_path}:\n{tail}")
    summary: dict[str, Any] = json.loads(path.read_text())
    if summary.get("status") != "completed":
        raise RunFailedError(f"run {summary.get('status')}: {summary.get('reason')}")
    return summary


def run_inprocess(config: ExperimentConfig, run_dir: Path, *,
                  overwrite: bool = False) -> dict[str, Any]:
    """Run ``config`` through the in-process grid (same ServerApp / ClientApp code).

    ``run_dir`` and ``overwrite`` as in :func:`run_simulation`; Flower's and the app's
    log lines go to ``flower.log``. Raises what :func:`~securefed.app.server_app.
    run_server` raises, and :class:`Interrupted` on SIGINT or SIGTERM (after
    ``summary.json`` recorded it).
    """
    from securefed.app.client_app import app as client_app
    from securefed.app.grid import InProcessGrid
    from securefed.app.server_app import run_server

    preflight(config, engine="inprocess")
    run_dir = prepare_run_dir(run_dir, overwrite=overwrite)
    with signals_as_interrupts(), _run_dir_lifecycle(run_dir), \
            route_logs(run_dir / FLOWER_LOG):
        config_file = run_dir / "config.toml"
        config_file.write_text(tomli_w.dumps(config.to_dict()))
        run_config = {"config-file": str(config_file), "run-dir": str(run_dir)}
        grid = InProcessGrid(client_app, config.data.num_clients, run_config,
                             node_configs=prepare_node_configs(config, run_dir))
        return run_server(grid, run_config)
