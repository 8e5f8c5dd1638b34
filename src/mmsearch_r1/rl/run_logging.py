"""What a GRPO run writes about itself: ``metrics.jsonl``, ``samples.jsonl``, timings, graceful stops.

What it does:
- `MetricsLogger` (a ``transformers.TrainerCallback``) appends one JSON line per optimizer step to
  ``<run>/metrics.jsonl``: the reward mean and its parts, accuracy, search ratio, image and text calls,
  tool failures, completion tokens, step seconds split into generation / tools / the rest, peak memory,
  plus every raw TRL log key. On (re)start it rewrites the file keeping only steps up to the trainer's
  restored ``global_step`` (deduplicated), so a resumed run has each completed step exactly once.
- `TimedGRPOTrainer`: ``trl.GRPOTrainer`` plus timers around generation and the tool loop (logged as
  ``timing/*``) and a copy of the last batch's rollouts (``last_rollouts``: prompt, completion messages
  with their images, reward) for notebooks and ``samples.jsonl``. It changes no behaviour of TRL.
- `rollout_text`: one ``samples.jsonl`` line (``log_samples`` rollouts a step): the messages as text
  (images as ``<image>``), the row's kind, the final answer and its exact match, and the question image
  and thumbnails as small bounded JPEGs (`rollout_images_field`) for `mmsearch_r1.evaluation.viewer`.
- `GracefulStop`: on SIGTERM (and SIGINT outside Jupyter) finish the current step, checkpoint, stop;
  a SIGKILL loses at most the steps since the last periodic checkpoint.
- `read_metrics(path)`: the metrics as a list of dicts (last record per step wins). A last line cut by
  a kill (``metrics.jsonl`` or ``samples.jsonl``) is skipped with a warning, so the run can resume.

What it does not: no training setup (``mmsearch_r1.rl.train``), no plots (the notebooks).
"""

from __future__ import annotations

import contextlib
import json
import math
import resource
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from trl import GRPOTrainer

from mmsearch_r1.data.schema import read_jsonl, write_jsonl
from mmsearch_r1.helpers import jpeg_b64
from mmsearch_r1.protocol.rewards import score_record
from mmsearch_r1.protocol.tags import parse_turn
from mmsearch_r1.rl.policy_head import frozen_linears_cast_once, unpadded_rows
from mmsearch_r1.rl.resume import saved_weight_names
from mmsearch_r1.rl.rewards import message_to_tag_text

# canonical metrics.jsonl field <- TRL log key
CANONICAL = {
    "reward": "reward",
    "reward_std": "reward_std",
    "accuracy": "mmsearch/accuracy",
    "format": "mmsearch/format",
    "search_ratio": "mmsearch/search_ratio",
    "image_calls": "mmsearch/image_calls",
    "text_calls": "mmsearch/text_calls",
    "tool_failures": "mmsearch/tool_failures",
    "tool_refused": "mmsearch/tool_refused",
    "cut_after_search": "mmsearch/cut_after_search",
    "turns": "mmsearch/turns",
    "penalty_factor": "mmsearch/penalty_factor",
    "tool_call_frequency": "tools/call_frequency",
    "tool_failure_frequency": "tools/failure_frequency",
    "completion_tokens": "completions/mean_length",
    "clipped_ratio": "completions/clipped_ratio",
    "loss": "loss",
    "kl": "kl",
    "entropy": "entropy",
    "grad_norm": "grad_norm",
    "learning_rate": "learning_rate",
    "generation_seconds": "timing/generation_s",
    "tool_seconds": "timing/tools_s",
    "rollout_seconds": "timing/rollout_s",
}
"""metrics.jsonl's stable names and the TRL/`rl.rewards` log keys they come from."""


def peak_memory_mb() -> float:
    """Peak resident memory of this process (CPU), or peak allocated CUDA memory when on GPU, in MiB."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def read_metrics(path: str | Path) -> list[dict]:
    """Records of a metrics.jsonl, one per step (the last record of a step wins), sorted by step.

    A line cut by a kill is skipped with a warning (`mmsearch_r1.data.schema.read_jsonl`, append-only mode).
    """
    by_step: dict[int, dict] = {}
    for rec in read_jsonl(path, append_only=True):
        if isinstance(rec.get("step"), int):
            by_step[rec["step"]] = rec
    return [by_step[s] for s in sorted(by_step)]


def truncate_metrics(path: str | Path, keep_up_to: int) -> int:
    """Rewrite ``path`` with one record per step for steps <= ``keep_up_to``; return how many were kept."""
    path = Path(path)
    kept = [r for r in read_metrics(path) if r["step"] <= keep_up_to]
    write_jsonl(path, kept)
    return len(kept)


def _clean(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLogger(TrainerCallback):
    """Write ``metrics.jsonl`` (one line per step) and ``samples.jsonl`` into ``run_dir``."""

    def __init__(self, run_dir: str | Path, *, log_samples: int = 2, trainer: Any = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.samples_path = self.run_dir / "samples.jsonl"
        self.log_samples = log_samples
        self.trainer = trainer
        self._t0: float | None = None
        self._step_seconds: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            truncate_metrics(self.path, state.global_step)
            if self.samples_path.exists():  # a cut last line (a kill mid-write) is dropped with a warning
                rows = read_jsonl(self.samples_path, append_only=True)
                keep = [r for r in rows if (r.get("step") or 0) <= state.global_step]
                tmp = self.samples_path.with_suffix(".jsonl.tmp")
                tmp.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
                tmp.replace(self.samples_path)

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._t0 is not None:
            self._step_seconds = time.perf_counter() - self._t0

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if not state.is_world_process_zero or "reward" not in logs:  # not a training-step log
            return
        raw = {k: _clean(v) for k, v in logs.items()}
        rec: dict[str, Any] = {"step": state.global_step, "epoch": _clean(state.epoch), "time": time.time()}
        for name, key in CANONICAL.items():
            rec[name] = raw.get(key)
        rec["reward_parts"] = {
            k.split("/")[1]: v for k, v in raw.items() if k.startswith("rewards/") and k.endswith("/mean")
        }
        rec["step_seconds"] = self._step_seconds if self._step_seconds is not None else raw.get("step_time")
        if rec["step_seconds"] is not None:
            used = sum(rec[k] or 0.0 for k in ("generation_seconds", "tool_seconds"))
            rec["other_seconds"] = max(rec["step_seconds"] - used, 0.0)
        rec["peak_memory_mb"] = peak_memory_mb()
        rec["trl"] = raw
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
        self._write_samples(state.global_step)

    def _write_samples(self, step: int) -> None:
        rollouts = getattr(self.trainer, "last_rollouts", None) or []
        if not self.log_samples or not rollouts:
            return
        with self.samples_path.open("a", encoding="utf-8") as fh:
            for r in rollouts[: self.log_samples]:
                fh.write(json.dumps({"step": step, **rollout_text(r)}) + "\n")


def _blocks_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    out = []
    for b in content or []:
        if isinstance(b, dict) and b.get("type") == "image":
            out.append("<image>")
        elif isinstance(b, dict):
            out.append(str(b.get("text") or ""))
    return "".join(out)


SAMPLE_IMAGE_SIDE = 128
"""Longest side (px) of the images a ``samples.jsonl`` line keeps for the viewer (`mmsearch_r1.evaluation.viewer`);
read at call time, so ``run_logging.SAMPLE_IMAGE_SIDE = 0`` keeps none."""
SAMPLE_MAX_IMAGES = 12
"""At most this many images per line: the question image, then thumbnails in order (the rest dropped)."""


def rollout_text(rollout: dict, *, images: bool = True) -> dict:
    """A rollout as JSON-able text: question, answer, reward, and each message (images as ``<image>``).

    For the viewer it adds the row's ``data_id``, ``kind``, ``category`` and ``aliases``, the final
    answer (``prediction``, as `agent.rollout.Trajectory.record` reads it) scored by `protocol.rewards.score_record`
    (``em``; ``searched``: a tool ran), the tool messages' ``name``, and with ``images`` (and ``SAMPLE_IMAGE_SIDE``
    > 0) ``images``: the question image and thumbnails as small JPEGs (`rollout_images_field`).
    """
    messages = []
    for m in rollout.get("completion") or []:
        entry = {"role": m.get("role"), "content": _blocks_text(m.get("content"))}
        if m.get("role") == "tool" and m.get("name"):
            entry["name"] = m["name"]
        if m.get("reasoning_content"):
            entry["reasoning"] = m["reasoning_content"]
        if m.get("tool_calls"):
            entry["tool_calls"] = [
                {"name": c.get("function", c).get("name"), "arguments": c.get("function", c).get("arguments")}
                for c in m["tool_calls"]
            ]
        messages.append(entry)
    completion = [m for m in rollout.get("completion") or [] if isinstance(m, dict)]
    final = next((m for m in reversed(completion) if m.get("role") == "assistant"), None)
    turn = parse_turn(message_to_tag_text(final)) if final is not None else None
    prediction = turn.answer if turn is not None and turn.action == "answer" else None
    aliases = rollout.get("aliases")
    out = {
        "question": rollout.get("question"),
        "answer": rollout.get("answer"),
        "reward": rollout.get("reward"),
        "messages": messages,
        "data_id": rollout.get("data_id"),
        "kind": rollout.get("kind"),
        "category": rollout.get("category"),
        "aliases": list(aliases) if isinstance(aliases, (list, tuple)) else [],
        "prediction": prediction,
    }
    tools_ran = sum(m.get("role") == "tool" for m in completion)
    scored = score_record(
        {"prediction": prediction, "answer": out["answer"], "aliases": out["aliases"], "searches": tools_ran}
    )
    out.update(em=scored["em"], searched=scored["searched"])
    if images and SAMPLE_IMAGE_SIDE:
        out["images"] = rollout_images_field(rollout)
    return out


def rollout_images_field(rollout: dict, side: int | None = None, max_images: int | None = None) -> dict:
    """``{"question": b64, "tools": [[b64, ...] per tool message]}``: base64 JPEGs at most ``side`` px
    (`helpers.jpeg_b64`), at most ``max_images`` in all; the question image is the prompt's first image
    (else the row's ``image``)."""
    side, max_images = side or SAMPLE_IMAGE_SIDE, max_images or SAMPLE_MAX_IMAGES

    def images_of(message: dict) -> list:
        content = message.get("content")
        blocks = content if isinstance(content, list) else []
        return [b.get("image") for b in blocks if isinstance(b, dict) and b.get("type") == "image"]

    prompt_images = [im for m in rollout.get("prompt") or [] if isinstance(m, dict) for im in images_of(m)]
    question = next((im for im in prompt_images if im is not None), rollout.get("image"))
    tools, left = [], max_images - 1
    for m in rollout.get("completion") or []:
        if isinstance(m, dict) and m.get("role") == "tool":
            shown = images_of(m)
            tools.append([jpeg_b64(im, side) for im in shown[: max(left, 0)]])
            left -= len(shown)
    return {"question": jpeg_b64(question, side), "tools": tools}


def rollout_images(rollout: dict) -> list:
    """The images of a rollout in order: the question image, then every thumbnail the tools returned."""
    images = []
    for m in [*(rollout.get("prompt") or []), *(rollout.get("completion") or [])]:
        content = m.get("content")
        if isinstance(content, list):
            images += [
                b["image"]
                for b in content
                if isinstance(b, dict) and b.get("type") == "image" and b.get("image")
            ]
    if not images and rollout.get("image") is not None:
        images.append(rollout["image"])
    return images


class TimedGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` that times generation and the tool loop and keeps the last batch's rollouts; with
    ``policy_token_head`` (``auto``: on CPU) its loss projects the LM head on the policy's own completion
    tokens only (`mmsearch_r1.rl.policy_head`); with ``generation_copy`` (``auto``: on a CPU with native
    bf16) a bf16 copy of the model generates the rollouts (`mmsearch_r1.rl.generation_copy`)."""

    last_rollouts: list[dict]

    def __init__(self, *args, policy_token_head: str = "auto", generation_copy: str = "auto", **kwargs):
        import torch

        from mmsearch_r1.rl import generation_copy as gc
        from mmsearch_r1.rl.policy_head import install_policy_token_head, wanted

        self.last_rollouts = []
        self._gen_s = 0.0
        self.policy_token_mask = None
        model, grpo_args = kwargs.get("model"), kwargs.get("args")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        copy_it = isinstance(model, torch.nn.Module) and gc.wanted(
            generation_copy, device=device, use_vllm=bool(getattr(grpo_args, "use_vllm", False)),
            peft=hasattr(model, "peft_config"))  # fmt: skip
        self.generation_copy = gc.GenerationCopy(model) if copy_it else None  # before TRL patches the model
        super().__init__(*args, **kwargs)
        head = wanted(policy_token_head, self.accelerator.device)
        self.policy_token_head = head and install_policy_token_head(self)

    def _compute_loss(self, model, inputs):
        self.policy_token_mask = inputs.get("tool_mask")
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self.policy_token_mask = None

    def _get_per_token_logps_and_entropies(
        self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False,
        compute_aux_loss=False, **fields,
    ):  # fmt: skip
        """With the policy-token head, each sequence is scored alone and without its padding
        (`rl.policy_head.unpadded_rows`); otherwise, or for inputs it cannot cut, TRL's padded batch."""
        rows = None
        if self.policy_token_head and not compute_aux_loss:
            rows = unpadded_rows(input_ids, attention_mask, logits_to_keep, fields)
        if rows is None:
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy,
                compute_aux_loss, **fields)  # fmt: skip
        batch_mask = self.policy_token_mask
        logps, entropies = [], []
        cast = self.args.bf16 and torch.device(self.accelerator.device).type == "cpu"
        frozen = frozen_linears_cast_once(model, torch.bfloat16) if cast else contextlib.nullcontext()
        try:
            with frozen:
                for i, row, keep in rows:
                    if batch_mask is not None:
                        self.policy_token_mask = batch_mask[i : i + 1, :keep]
                    lp, ent, _ = super()._get_per_token_logps_and_entropies(
                        model, logits_to_keep=keep, compute_entropy=compute_entropy, **row
                    )
                    pad = logits_to_keep - keep
                    logps.append(torch.nn.functional.pad(lp, (0, pad)))
                    if compute_entropy:
                        entropies.append(torch.nn.functional.pad(ent, (0, pad)))
        finally:
            self.policy_token_mask = batch_mask
        return torch.cat(logps), torch.cat(entropies) if compute_entropy else None, None

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """TRL's resume, with the checkpoint's weight names mapped to the model's (`rl.resume.saved_weight_names`)."""
        target = self.model if model is None else model
        names, load = saved_weight_names(target), target.load_state_dict
        target.load_state_dict = lambda sd, *a, **k: load(
            {names.get(n, n): t for n, t in sd.items()}, *a, **k
        )
        try:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        finally:
            del target.load_state_dict

    def _generate_single_turn(self, *args, **kwargs):
        t0 = time.perf_counter()
        wrapped = self.model_wrapped
        if self.generation_copy is not None:  # TRL generates with self.model_wrapped: lend it the bf16 copy
            self.generation_copy.refresh(self.model, self.state.global_step)
            self.model_wrapped = self.generation_copy.model
        try:
            return super()._generate_single_turn(*args, **kwargs)
        finally:
            self.model_wrapped = wrapped
            self._gen_s += time.perf_counter() - t0

    def _tool_call_loop(self, *args, **kwargs):
        t0, gen0 = time.perf_counter(), self._gen_s
        try:
            return super()._tool_call_loop(*args, **kwargs)
        finally:
            inner_gen = self._gen_s - gen0
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["timing/tools_s"].append(time.perf_counter() - t0 - inner_gen)

    def _generate(self, prompts):
        t0 = time.perf_counter()
        self._gen_s = 0.0
        out = super()._generate(prompts)
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["timing/generation_s"].append(self._gen_s)
        self._metrics[mode]["timing/rollout_s"].append(time.perf_counter() - t0)
        return out

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        try:
            local = rewards[: len(prompts)] if self.accelerator.num_processes == 1 else None
            self.last_rollouts = [
                {
                    "question": x.get("question"),
                    "answer": x.get("answer"),
                    "aliases": x.get("aliases"),
                    "data_id": x.get("data_id"),
                    "kind": x.get("kind"),
                    "category": x.get("category"),
                    "image": x.get("image"),
                    "prompt": p,
                    "completion": c,
                    "reward": None if local is None else float(local[i].nansum()),
                }
                for i, (x, p, c) in enumerate(zip(inputs, prompts, completions, strict=True))
            ]
        except Exception:  # noqa: BLE001 - bookkeeping must never break training
            self.last_rollouts = []
        return rewards


class GracefulStop(TrainerCallback):
    """On SIGTERM (and SIGINT when not in Jupyter), checkpoint at the end of the current step and stop."""

    def __init__(self, signals: tuple[int, ...] | None = None):
        self.requested = False
        self._previous: dict[int, Any] = {}
        if signals is None:
            signals = (signal.SIGTERM,) if _in_jupyter() else (signal.SIGTERM, signal.SIGINT)
        self.signals = signals

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:  # a second Ctrl-C aborts at once
            raise KeyboardInterrupt
        self.requested = True
        print(f"[train] signal {signum}: finishing this step, then checkpoint and stop", flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handler)

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()


def _in_jupyter() -> bool:
    try:
        from IPython import get_ipython

        return get_ipython() is not None
    except ImportError:
        return False
