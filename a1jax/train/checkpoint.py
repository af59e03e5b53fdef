"""Checkpoints: orbax, asynchronous, atomic, keeping the last K, verified on restore, with fallback past a damaged one.

A checkpoint at WORKDIR/checkpoints/<step>/ holds the train state (params, optimizer state, step, rng, counters),
the data iterator state of every process and the experiment config. Orbax writes into a temporary directory and
renames it when the write completes, so a run killed mid-save leaves the previous checkpoints intact and the partial
one invisible. On object storage (a `gs://` directory, through `a1jax.storage`), which has no rename, orbax writes
the step in place and its commit marker (STEP/commit_success.txt) last; a step without one is never listed, so never
restored (tests/test_storage.py).

Multi-process runs: every process calls `save` and `restore`. Orbax writes each array shard from the process that
holds it and commits from process 0; restoring reads onto whatever shardings the abstract state carries, so a
checkpoint written on one mesh restores onto another. The `data` item holds one iterator state per process
(`{"processes": [state_0, state_1, ...]}`, gathered at save: orbax writes JSON items from process 0 only); each
process gets its own back.

Integrity: once a save has committed, process 0 writes STEP/a1jax_manifest.json (sha256 and size of every file in
the step directory; written to a temporary name and renamed). A restore first checks every file against it, so a
flipped byte, a truncated or missing file is caught before orbax reads anything (orbax restores some corrupted array
files silently). A damaged step is moved to damaged-STEP (damaged-STEP.2, ... if that name is taken) and the previous
step is tried, down to the oldest. A step without a manifest (the process died between the commit and the
manifest, or the checkpoint predates manifests) is restored unverified, with a warning.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp

from a1jax import distributed, storage
from a1jax.data.cache import file_sha256

log = logging.getLogger("a1jax.train")
MANIFEST = "a1jax_manifest.json"


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was expected (all damaged, or set aside earlier)."""


class CheckpointDamaged(CheckpointError):
    """A file of the step directory differs from the manifest written when it was saved."""


class CheckpointMismatch(ValueError):
    """The checkpoint is readable but not what this run needs (another model, another process count): never
    treated as damage, so nothing is set aside."""


class Checkpointer:
    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        self.directory = storage.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               create=True)
        handlers = dict(state=ocp.StandardCheckpointHandler(), data=ocp.JsonCheckpointHandler(),
                        config=ocp.JsonCheckpointHandler())  # registered up front, so metadata reads work
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        self._unsealed: int | None = None  # the step whose save may still be in flight: no manifest yet
        self._sealer: threading.Thread | None = None

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state, data_state: Any, config: dict, *, force: bool = False) -> bool:
        """Every process calls this with its own `data_state` (a collective in multi-process runs)."""
        data = {"processes": distributed.allgather_json(data_state)}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data),
                                  config=ocp.args.JsonSave(config))
        if self._unsealed is not None:  # orbax would wait for the previous save here anyway
            self._manager.wait_until_finished()
            self._seal(background=True)
        saved = self._manager.save(int(step), args=args, force=force)
        if saved:
            self._unsealed = int(step)
        return saved

    def _seal(self, *, background: bool):
        """Writes the manifest of the last committed save (process 0; in a thread while training goes on)."""
        step, self._unsealed = self._unsealed, None
        if self._sealer is not None:
            self._sealer.join()
            self._sealer = None
        path = os.path.join(self.directory, str(step))
        if step is None or jax.process_index() != 0 or not storage.isdir(path):
            return
        if background:
            self._sealer = threading.Thread(target=_write_manifest_logged, args=(path,),
                                            name=f"a1jax-manifest-{step}", daemon=False)
            self._sealer.start()
        else:
            write_manifest(path)

    def wait(self):
        self._manager.wait_until_finished()
        self._seal(background=False)

    def close(self):
        self._manager.wait_until_finished()
        self._seal(background=False)
        self._manager.close()

    def set_aside_dirs(self) -> list[str]:
        """Step directories moved aside as damaged, by this run or an earlier one."""
        if not storage.isdir(self.directory):
            return []
        return sorted(n for n in storage.listdir(self.directory) if n.startswith("damaged-"))

    def _set_aside(self, step: int):
        """Moves a damaged checkpoint out of the step sequence (kept for inspection, never deleted): to
        damaged-STEP, or damaged-STEP.2, .3, ... when a step of that number was set aside before."""
        path = os.path.join(self.directory, str(step))
        if jax.process_index() == 0 and storage.isdir(path):
            storage.replace(path, _free_name(os.path.join(self.directory, f"damaged-{step}")))
        distributed.barrier(f"a1jax_set_aside_{step}")  # no process re-lists the steps before the rename
        self._manager.reload()

    def check_model(self, step: int, abstract_state) -> None:
        """Raises CheckpointMismatch naming the arrays whose path or shape differ from `abstract_state`. A
        checkpoint whose metadata cannot be read passes here and fails (as damaged) in the restore."""
        try:
            saved = _shapes(self._manager.item_metadata(int(step))["state"].tree)
        except Exception:  # noqa: BLE001
            return
        want = _shapes(abstract_state)
        keys = sorted(set(saved) | set(want), key=lambda k: (not k.startswith("params/"), k))  # params first
        diff = [f"{k}: checkpoint {saved.get(k, 'missing')} vs model {want.get(k, 'missing')}"
                for k in keys if saved.get(k) != want.get(k)]
        if diff:
            more = f" (and {len(diff) - 5} more)" if len(diff) > 5 else ""
            raise CheckpointMismatch(f"checkpoint {os.path.join(self.directory, str(step))} holds a different model "
                                     f"than this run's config.model: {'; '.join(diff[:5])}{more}")

    def restore(self, step: int, abstract_state, *, data: bool = True):
        """(state, this process's data state or None, config) of one step, the state on the shardings of
        `abstract_state` (ShapeDtypeStructs with `.sharding`: any mesh, any device count). `data=False` skips
        the iterator state (e.g. to read params with another process count)."""
        path = os.path.join(self.directory, str(step))
        if not verify_manifest(path):
            log.warning("checkpoint %s has no %s (saved by an older a1jax, or the run stopped right after the "
                        "save): restoring it unverified", path, MANIFEST)
        self.check_model(step, abstract_state)
        items = dict(state=ocp.args.StandardRestore(abstract_state), config=ocp.args.JsonRestore())
        if data:
            items["data"] = ocp.args.JsonRestore()
        with _quiet_orbax():
            out = self._manager.restore(int(step), args=ocp.args.Composite(**items))
        return out["state"], (_this_process(out["data"], step) if data else None), out["config"]

    def restore_latest(self, abstract_state, *, data: bool = True, allow_fresh_start: bool = False):
        """Newest checkpoint that verifies and restores; a damaged one is set aside (one log line) and the previous
        one tried, down to the oldest. None if there is none to restore, which is an error (one line, naming the
        flag) when damaged checkpoints were set aside, now or by an earlier run, unless `allow_fresh_start`."""
        errors = []
        for step in reversed(self.steps()):
            try:
                state, data_state, config = self.restore(step, abstract_state, data=data)
                if errors:
                    log.warning("restored checkpoint %d after setting aside %d damaged one(s)", step, len(errors))
                return step, state, data_state, config
            except CheckpointMismatch:
                raise
            except Exception as e:  # noqa: BLE001 - any other failure to read a checkpoint means "damaged"
                path = os.path.join(self.directory, str(step))
                first_line = str(e).splitlines()[0][:300] if str(e) else ""
                msg = f"checkpoint {path} is damaged ({type(e).__name__}: {first_line})"
                log.error("%s; set aside, trying the previous one", msg)
                errors.append(msg)
                self._set_aside(step)
        aside = self.set_aside_dirs()
        if aside and not allow_fresh_start:
            now = (f"every checkpoint is damaged ({'; '.join(errors)})" if errors else
                   "no checkpoint is left, the damaged ones were set aside by an earlier run")
            raise CheckpointError(f"{self.directory}: {now}; set aside: {', '.join(aside[:4])}"
                                  f"{', ...' if len(aside) > 4 else ''}; refusing to retrain from step 0: pass "
                                  f"--allow_fresh_start to do so (or restore a checkpoint by hand)")
        if aside:
            log.warning("%s holds no usable checkpoint (%d set aside as damaged): starting from scratch, as "
                        "--allow_fresh_start says", self.directory, len(aside))
        return None


def _free_name(path: str) -> str:
    """`path`, or `path.2`, `path.3`, ...: the first that does not exist."""
    n, out = 1, path
    while storage.exists(out):
        n += 1
        out = f"{path}.{n}"
    return out


def _files(step_dir: str) -> list[str]:
    """Every file under `step_dir` (relative paths, sorted), the manifest and temporaries excepted."""
    return [rel for rel in storage.walk_files(step_dir) if rel not in (MANIFEST, MANIFEST + ".tmp")]


def write_manifest(step_dir: str) -> dict:
    """STEP/a1jax_manifest.json: {"files": {relative path: {"sha256", "bytes"}}} of a committed step directory,
    written atomically (a partial manifest is never read as a whole one)."""
    files = {rel: {"sha256": file_sha256(os.path.join(step_dir, rel)),
                   "bytes": storage.getsize(os.path.join(step_dir, rel))} for rel in _files(step_dir)}
    manifest = {"version": 1, "files": files}
    save_json(os.path.join(step_dir, MANIFEST), manifest)
    return manifest


def _write_manifest_logged(step_dir: str):
    try:
        write_manifest(step_dir)
    except OSError as e:  # e.g. the step was deleted (checkpoint.keep) while hashing: it is unverified, not lost
        log.warning("could not write the manifest of %s: %s", step_dir, e)


def verify_manifest(step_dir: str) -> bool:
    """True if `step_dir` matches its manifest, False if it has none; raises CheckpointDamaged naming the first
    file that is missing, of another size or another sha256, or a manifest that cannot be read."""
    path = os.path.join(step_dir, MANIFEST)
    if not storage.exists(path):
        return False
    try:
        files = storage.read_json(path)["files"]
        expected = {rel: (int(v["bytes"]), str(v["sha256"])) for rel, v in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointDamaged(f"{path} cannot be read ({type(e).__name__}: {e})") from None
    for rel, (size, digest) in sorted(expected.items()):
        full = os.path.join(step_dir, rel)
        if not storage.isfile(full):
            raise CheckpointDamaged(f"{full} is missing (listed in {MANIFEST})")
        if (got := storage.getsize(full)) != size:
            raise CheckpointDamaged(f"{full} has {got} bytes, {size} when saved")
        if file_sha256(full) != digest:
            raise CheckpointDamaged(f"{full} differs from the sha256 recorded when it was saved")
    return True


@contextlib.contextmanager
def _quiet_orbax():
    """Orbax logs a long traceback (through absl) for a checkpoint it cannot read; restore_latest reports that in
    one line of its own, so the absl logger is silenced below CRITICAL meanwhile."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        absl.setLevel(level)


def _this_process(data, step: int):
    """This process's entry of the saved per-process data states (older checkpoints: one bare state)."""
    if not (isinstance(data, dict) and set(data) == {"processes"}):
        return data
    states, n = data["processes"], jax.process_count()
    if len(states) != n:
        raise CheckpointMismatch(f"checkpoint {step} holds the data iterator states of {len(states)} processes, but "
                                 f"this run has {n}: resume with {len(states)} processes (a process's position in "
                                 f"the data cannot be re-split)")
    return states[jax.process_index()]


def _shapes(tree) -> dict[str, tuple]:
    """'params/embed/value' -> shape, for a tree of arrays, ShapeDtypeStructs or orbax ArrayMetadata."""
    def name(k):
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(name(k) for k in path): tuple(leaf.shape) for path, leaf in leaves if hasattr(leaf, "shape")}


def save_json(path: str, obj) -> None:
    """Atomic small-file write (config.json and the like): a temp file renamed into place, or one object write on
    object storage (`storage.write_atomic`)."""
    storage.save_json(path, obj)


def abstract_with_shardings(abstract_state, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)


def load_trained_params(workdir: str, step: int | None = None):
    """(ModelConfig, params) from a training workdir (WORKDIR/config.json + WORKDIR/checkpoints), e.g. to roll out
    or evaluate a stage-1 model. Uses the newest readable checkpoint unless `step` is given."""
    import functools

    import ml_collections

    from a1jax.train import experiment, optim
    from a1jax.train.state import init_state

    config_path = os.path.join(workdir, "config.json")
    if not storage.isfile(config_path):
        raise FileNotFoundError(f"{workdir} is not a training workdir: no config.json")
    config = ml_collections.ConfigDict(storage.read_json(config_path))
    cfg = experiment.model_config(config)
    opt = config.optimizer
    opt.total_steps = config.train.steps
    tx, _ = optim.make_optimizer(opt)
    abstract = jax.eval_shape(functools.partial(init_state, cfg, tx), jax.random.key(0))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    try:
        if step is None:
            restored = ckpt.restore_latest(abstract, data=False)
            if restored is None:
                raise FileNotFoundError(f"{workdir}/checkpoints holds no checkpoint")
            state = restored[1]
        else:
            state = ckpt.restore(step, abstract, data=False)[0]
    finally:
        ckpt.close()
    return cfg, state.params


def load_model(checkpoint: str):
    """(cfg, params) from a converted params directory or a training workdir, with params on the default device."""
    import jax

    from a1jax.model import unbox
    if storage.isdir(os.path.join(checkpoint, "checkpoints")):
        cfg, params = load_trained_params(checkpoint)
    else:
        from a1jax.convert import load_params
        cfg, params = load_params(checkpoint)
    return cfg, jax.device_put(unbox(params))


def load_init_params(path: str):
    """(ModelConfig, unboxed params) to start a run from: a training workdir (its newest checkpoint) or a converted
    checkpoint directory (`a1jax convert --from-hf`)."""
    if not storage.isdir(path):
        raise FileNotFoundError(f"init_from {path!r}: no such directory (a training workdir or a converted "
                                f"checkpoint)")
    return load_model(path)


def place_init_params(path: str, cfg, values, abstract_params, shardings):
    """`values` (from `path`) checked against the experiment's (boxed) abstract params and placed with `shardings`,
    in buffers of their own (the train step donates them)."""
    import jax.numpy as jnp

    from a1jax.model import unbox
    from a1jax.model.params import box_like
    want = jax.tree.map(lambda a: (a.shape, str(a.dtype)), unbox(abstract_params))
    got = jax.tree.map(lambda a: (a.shape, str(a.dtype)), values)
    if jax.tree.structure(want) != jax.tree.structure(got) or jax.tree.leaves(want) != jax.tree.leaves(got):
        raise ValueError(f"init_from {path}: its model ({cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
                         f"vocab {cfg.vocab_size}, {cfg.num_experts} experts) does not match config.model")
    return jax.tree.map(jnp.copy, jax.device_put(box_like(values, abstract_params), shardings))
