r"""One file per trained score model: weights and everything needed to rebuild it.

:func:`save_score` writes, with one ``torch.save``, a dict of plain values and tensors only (so
:func:`load_score` reads it with ``torch.load(weights_only=True)``, which runs no pickled code):

* ``format`` / ``version``; ``kind`` (``"network"`` or ``"energy"``);
* ``net``: the module and class name of the net, its ``config`` (constructor keyword arguments)
  and its ``state_dict``;
* ``process``: its class and constructor arguments (:class:`~smcdiff.VP`, :class:`~smcdiff.VE`,
  :class:`~smcdiff.Flow`, :class:`~smcdiff.processes.discrete.DiscreteVP` with a named spacing);
* ``prediction``, ``time_input`` (a name), ``event_shape``, ``max_batch`` and tensor / plain
  conditioning values;
* ``training`` (optional): the state :func:`smcdiff.train_score` resumes from (raw weights,
  optimiser, EMA, generator, step, losses, settings).

**Your own network class.** :func:`load_score` rebuilds only classes of :mod:`smcdiff.nets` by
itself (it imports nothing a file names). For another class give ``net=``: an instance with
the same architecture (the weights are loaded into it), or the class (or any callable) that
:func:`load_score` calls with the stored ``config`` — stored when the net has a ``config``
attribute, a dict of plain values (numbers, strings, lists, ``None``) that its constructor takes
as keyword arguments. A process of another class is given the same way (``process=``), as is a
callable ``time_input`` (which cannot be stored).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from smcdiff.errors import CheckpointError, SMCDiffError
from smcdiff.processes.schedules import VE, VP, Flow, NoiseProcess
from smcdiff.scores.energy_network import EnergyNetwork
from smcdiff.scores.network import NetworkScore

__all__ = ["FORMAT", "VERSION", "load_score", "process_spec", "read_checkpoint", "save_score"]

FORMAT = "smcdiff-score"
VERSION = 1
_PLAIN = (bool, int, float, str, type(None), torch.Tensor)


def _plain(value: Any) -> bool:
    """Numbers, strings, ``None``, tensors, and lists / tuples / dicts of them."""
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def process_spec(process: NoiseProcess) -> dict[str, Any] | None:
    """``{"class": name, "kwargs": {...}}`` rebuilding ``process``, or ``None`` for a class (or
    a setting, such as a callable spacing) this module cannot store."""
    kind = type(process)
    if kind is VP:
        kw = {"schedule": process.schedule, "beta_min": process.beta_min,
              "beta_max": process.beta_max, "cosine_s": process.cosine_s}  # fmt: skip
        return {"class": "VP", "kwargs": kw}
    if kind is VE:
        return {"class": "VE", "kwargs": {"sigma_min": process.sigma_min,
                                          "sigma_max": process.sigma_max}}  # fmt: skip
    if kind is Flow:
        return {"class": "Flow", "kwargs": {}}
    from smcdiff.processes.discrete import DiscreteVP

    if kind is DiscreteVP and isinstance(process.spacing, str):
        kw = {"alphas_cumprod": process.alphas_cumprod, "spacing": process.spacing,
              "steps_offset": process.steps_offset}  # fmt: skip
        return {"class": "DiscreteVP", "kwargs": kw}
    return None


def _build_process(spec: dict[str, Any] | None, path: str) -> NoiseProcess:
    from smcdiff.processes.discrete import DiscreteVP

    classes = {"VP": VP, "VE": VE, "Flow": Flow, "DiscreteVP": DiscreteVP}
    if spec is None or spec.get("class") not in classes:
        raise CheckpointError(
            f"load_score: {path} does not store its process (a class or setting save_score "
            "cannot store); pass process= (the NoiseProcess the net was trained under)"
        )
    return classes[spec["class"]](**spec["kwargs"])


def _net_entry(net: Any) -> dict[str, Any]:
    if not isinstance(net, torch.nn.Module):
        raise SMCDiffError(
            f"save_score: the score model's net is a {type(net).__name__}, not an nn.Module; "
            "only modules have weights to store"
        )
    config = getattr(net, "config", None)
    if config is not None and not _plain(config):
        raise SMCDiffError(
            f"save_score: {type(net).__name__}.config must be a dict of plain values (numbers, "
            "strings, lists, None) that its constructor takes as keyword arguments"
        )
    return {"module": type(net).__module__, "class": type(net).__qualname__,
            "config": config, "state_dict": net.state_dict()}  # fmt: skip


def save_score(
    score: NetworkScore | EnergyNetwork, path: str | os.PathLike, *, training: dict | None = None
) -> Path:
    """Write ``score`` (a :class:`~smcdiff.NetworkScore` or :class:`~smcdiff.EnergyNetwork`
    around an ``nn.Module``) to ``path`` in one file (module docstring); the file is written
    next to ``path`` and renamed over it, so a crash never leaves half a file. ``training``:
    the trainer's resumable state (see :func:`smcdiff.train_score`). Returns the path."""
    if not isinstance(score, NetworkScore | EnergyNetwork):
        raise SMCDiffError(
            f"save_score: expected a NetworkScore or EnergyNetwork, got {type(score).__name__}"
        )
    time_input = score.time_input
    if not isinstance(time_input, str):
        time_input = None  # a callable: given again to load_score
    cond = {k: v for k, v in score.cond.items() if _plain(v)}
    if len(cond) != len(score.cond):
        bad = sorted(set(score.cond) - set(cond))
        raise SMCDiffError(f"save_score: conditioning values {bad} are not tensors or plain values")
    energy = isinstance(score, EnergyNetwork)
    entry = {
        "format": FORMAT, "version": VERSION, "kind": "energy" if energy else "network",
        "net": _net_entry(score.net), "process": process_spec(score.process),
        "prediction": score.prediction, "time_input": time_input,
        "event_shape": list(score.event_shape), "max_batch": score.max_batch, "cond": cond,
        "training": training,
    }  # fmt: skip
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(entry, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | os.PathLike, map_location: Any = None) -> dict[str, Any]:
    """The stored dict of a :func:`save_score` file (``weights_only=True``), format checked."""
    try:
        entry = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"load_score: no file {path}") from None
    except Exception as err:
        raise CheckpointError(f"load_score: {path} is not a readable torch file ({err})") from err
    if not isinstance(entry, dict) or entry.get("format") != FORMAT:
        raise CheckpointError(f"load_score: {path} is not a smcdiff score file (save_score)")
    if entry.get("version") != VERSION:
        raise CheckpointError(
            f"load_score: {path} has format version {entry.get('version')}; this smcdiff reads "
            f"version {VERSION}"
        )
    return entry


def _build_net(entry: dict[str, Any], net: Any, path: str) -> torch.nn.Module:
    stored = entry["net"]
    name = f"{stored['module']}.{stored['class']}"
    if isinstance(net, torch.nn.Module):
        module = net
    elif net is not None:
        module = net(**(stored["config"] or {}))
    else:
        import smcdiff.nets

        cls = getattr(smcdiff.nets, stored["class"], None)
        if not stored["module"].startswith("smcdiff.nets") or cls is None:
            raise CheckpointError(
                f"load_score: {path} holds a {name} (config {stored['config']}); pass net= "
                "(an instance with that architecture, or its class, called with the config)"
            )
        module = cls(**stored["config"])
    try:
        module.load_state_dict(stored["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(
            f"load_score: the weights in {path} ({name}) do not fit the given net: {err}"
        ) from err
    return module


def load_score(
    path: str | os.PathLike,
    *,
    net: Any = None,
    process: NoiseProcess | None = None,
    time_input: Any = None,
    map_location: Any = None,
    compile: Any = False,
    **cond: Any,
) -> NetworkScore | EnergyNetwork:
    """The score model :func:`save_score` wrote to ``path``, net in eval mode.

    ``net``: ``None`` (a :mod:`smcdiff.nets` class, rebuilt from its config), an ``nn.Module``
    instance (weights loaded into it) or a class / callable (called with the stored config).
    ``process``, ``time_input``: override or supply what the file does not hold.
    ``map_location``: as for ``torch.load`` (e.g. ``"cpu"`` for a GPU-trained file on a CPU
    machine). ``compile``: ``torch.compile`` the net (as for :class:`~smcdiff.NetworkScore`;
    score networks only). ``cond``: conditioning keyword arguments added to the stored ones."""
    path = str(path)
    entry = read_checkpoint(path, map_location)
    module = _build_net(entry, net, path).eval()
    if isinstance(map_location, (str, torch.device)):  # a rebuilt net is made on the CPU
        module = module.to(map_location)
    proc = process if process is not None else _build_process(entry["process"], path)
    ti = time_input if time_input is not None else entry["time_input"]
    if ti is None:
        raise CheckpointError(
            f"load_score: {path} was saved with a callable time_input; pass time_input="
        )
    kw = {"time_input": ti, "max_batch": entry["max_batch"],
          "event_shape": tuple(entry["event_shape"]), **entry["cond"], **cond}  # fmt: skip
    if entry["kind"] == "energy":
        if compile:
            raise CheckpointError("load_score: compile= is for score networks, not energy ones")
        return EnergyNetwork(module, proc, **kw)
    return NetworkScore(module, proc, entry["prediction"], compile=compile, **kw)
