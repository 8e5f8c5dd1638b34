"""Whether a GRPO run folder may be resumed, and from which checkpoint.

What it does: `find_resume_checkpoint` picks the checkpoint (``resume``: auto / never / a path), skipping
one cut off while saving (`last_complete_checkpoint`); `check_resume_compatible` refuses a folder whose
recorded ``config.json`` differs in a training setting, or whose ``fingerprint.json`` (`fingerprint`:
digests of the policy's and the data set's files) no longer matches the files, so that a checkpoint made
from an older warm start, another data set or a smoke run is never continued as if it were this run.

What it does not: no training and no writing of checkpoints (TRL's Trainer does that, `mmsearch_r1.rl.train`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path

from mmsearch_r1.rl.config import TrainConfig


def _file_digest(path: Path) -> str:
    """SHA-256 of a file; for files over 64 MiB, of its size and first and last MiB (weights: fast)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as fh:
        if size <= 64 * 2**20:
            h.update(fh.read())
        else:
            h.update(str(size).encode() + fh.read(2**20))
            fh.seek(-(2**20), os.SEEK_END)
            h.update(fh.read())
    return h.hexdigest()[:16]


def _path_digest(path: Path) -> str | None:
    """Digest of a file, or of every file in a folder (names and contents); None when it does not exist.
    In a folder, hidden files and the ``cache-*.arrow`` files that ``datasets`` writes beside a saved data
    set when it is filtered or mapped are not the data: left out."""
    if path.is_file():
        return _file_digest(path)
    if not path.is_dir():
        return None
    h = hashlib.sha256()
    data = (q for q in path.rglob("*") if q.is_file() and not q.name.startswith((".", "cache-")))
    for f in sorted(data):
        h.update(f"{f.relative_to(path)}:{_file_digest(f)};".encode())
    return h.hexdigest()[:16]


def fingerprint(cfg: TrainConfig) -> dict:
    """What a run trains from beyond its config's strings: digests of the policy's and the data set's files.

    ``model="demo-sft"`` or a dataset path names a file that a later warm start or notebook 01 rewrites;
    resuming a checkpoint made from the old files would mix two runs, so `check_resume_compatible`
    compares these too. Names without local files (a hub id, ``tiny``, ``world``) are their own digest.
    """
    from mmsearch_r1.policy.load import DEMO_SFT_DIR

    model = DEMO_SFT_DIR if cfg.model == "demo-sft" else Path(cfg.model)
    return {
        "model": _path_digest(model) or cfg.model,
        "dataset": _path_digest(Path(cfg.dataset)) or cfg.dataset,
    }


def find_resume_checkpoint(cfg: TrainConfig) -> str | None:
    """The checkpoint to resume from (``resume``: auto / never / a path), or None."""
    if cfg.resume == "never":
        return None
    if cfg.resume != "auto":
        if not Path(cfg.resume).is_dir():
            raise FileNotFoundError(f"resume={cfg.resume!r} is not a checkpoint folder; use auto or never.")
        return cfg.resume
    if not cfg.run_dir.is_dir():
        return None
    return last_complete_checkpoint(cfg.run_dir)


def last_complete_checkpoint(run_dir: Path) -> str | None:
    """The run folder's newest ``checkpoint-N`` that was written to the end, or None.

    The Trainer writes ``trainer_state.json`` last (after the model, optimizer and RNG states); a
    checkpoint without it was cut off (a killed run, a full disk) and cannot be resumed, so it is
    skipped with a warning rather than crashing the resume (transformers' ``get_last_checkpoint`` takes
    the newest folder whatever its state).
    """
    found = sorted(
        (int(m.group(1)), p)
        for p in Path(run_dir).iterdir()
        if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name))
    )
    for _, path in reversed(found):
        if (path / "trainer_state.json").is_file():
            return str(path)
        warnings.warn(f"{path} is incomplete (no trainer_state.json: the run was cut off while saving); "
                      "resuming from an earlier checkpoint. Delete it to silence this.", stacklevel=2)  # fmt: skip
    return None


RESUMABLE_CHANGES = {"max_steps", "save_steps", "save_total_limit", "resume", "log_samples", "save_final", "name",
                     "output_dir"}  # fmt: skip
"""Fields a resumed run may change; any other difference from the checkpointed run is an error."""


def steps_done(checkpoint: str | None) -> int:
    """The optimizer steps a checkpoint holds (its ``trainer_state.json``), 0 without one."""
    if not checkpoint:
        return 0
    return int(json.loads((Path(checkpoint) / "trainer_state.json").read_text()).get("global_step", 0))


def check_resume_compatible(cfg: TrainConfig) -> None:
    """Refuse to resume a run folder whose recorded config differs in a training setting, or whose policy or
    data set files changed since (`fingerprint`)."""
    path = cfg.run_dir / "config.json"
    if not path.is_file():
        return
    old, new = json.loads(path.read_text()), cfg.to_dict()
    diff = {k: (old.get(k), v) for k, v in new.items() if k not in RESUMABLE_CHANGES and old.get(k) != v}
    prints = cfg.run_dir / "fingerprint.json"
    if prints.is_file():
        was, now = json.loads(prints.read_text()), fingerprint(cfg)
        for key in ("model", "dataset"):
            if was.get(key) != now[key]:
                diff[f"{key} files ({getattr(cfg, key)})"] = (was.get(key), now[key])
    if diff:
        text = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
        raise ValueError(
            f"{cfg.run_dir} holds a run made from other settings or files ({text}); resuming would mix "
            "them. Use another name/output_dir, or resume=never to start over."
        )


def clear_checkpoints(run_dir: Path) -> None:
    """Delete every ``checkpoint-*`` folder of a run (``resume="never"``)."""
    for ckpt in run_dir.glob("checkpoint-*"):
        if ckpt.is_dir():
            shutil.rmtree(ckpt)


def saved_weight_names(model) -> dict[str, str]:
    """``{name in a checkpoint: name in the model}`` where ``save_pretrained`` renames weights.

    transformers saves some models in their original checkpoint layout (a Qwen2.5-VL's
    ``model.language_model.layers.*`` as ``model.layers.*``, ``model.visual.*`` as ``visual.*``), but its
    Trainer resumes by loading a checkpoint's weights under their saved names: every weight is then
    "missing" and the run would go on from its initial weights (transformers issue 43701).
    `mmsearch_r1.rl.run_logging.TimedGRPOTrainer` maps the names back with this. Empty for PEFT models
    (their adapters load through PEFT) and for models saved under their own names."""
    from transformers.core_model_loading import revert_weight_conversion

    if hasattr(model, "peft_config"):
        return {}
    state = model.state_dict()
    own = {id(t): name for name, t in state.items()}
    saved = revert_weight_conversion(model, dict(state))
    return {s: own[id(t)] for s, t in saved.items() if id(t) in own and own[id(t)] != s}
