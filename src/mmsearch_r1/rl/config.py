"""`TrainConfig`: every setting of a GRPO run, with the paper's defaults and a CPU demo preset.

What it does:
- `TrainConfig` is one dataclass (a docstring per field) covering the policy, data, search engines,
  reward, GRPO and run-folder settings. Its defaults are the paper's (MMSearch-R1, App. F.1 and the
  released script): 8 rollouts per prompt, lr 2e-6, beta 0.001, clip 0.2, 2 tool-calling rounds
  (3 assistant turns), penalty 0.1, format weight 0.1, and per-group advantage scaling
  (``scale_rewards="group"``: under batch scaling a 0.1 penalty had no measurable effect in a CPU
  study of on-demand search).
- `PRESETS` (`mmsearch_r1.rl.presets`): ``paper`` (the defaults), ``cpu_demo`` (the CPU demo policy's
  own settings) and ``tiny`` (tests and smoke runs).
- `load_config(path, preset=, overrides=)`: preset, then a YAML/JSON file (which may name its own
  ``preset``), then ``key=value`` overrides (values parsed as YAML: ``lora=true``, ``lr=1e-5``,
  ``grpo_overrides={top_p: 0.9}``). Unknown keys and wrong types fail with the key's name and the fix.

What it does not: no TRL ``GRPOConfig`` (`mmsearch_r1.rl.grpo_args.to_grpo_config` builds it from a
`TrainConfig`), no model, data or engine loading (`mmsearch_r1.rl.train` does that).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from mmsearch_r1.rl.presets import PRESETS

LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
"""Loss formulations TRL 1.16 implements (``GRPOConfig.loss_type``)."""
SCALE_REWARDS = ("group", "batch", "none")
"""Advantage scaling choices of TRL (``GRPOConfig.scale_rewards``)."""


@dataclass
class TrainConfig:
    """One GRPO run. Defaults are the paper's; see `PRESETS` for the CPU demo and tiny settings."""

    # -- run ---------------------------------------------------------------------------------------
    name: str = "grpo"
    """Run name; outputs go to ``runs/<name>/`` unless ``output_dir`` is set."""
    preset: str = "paper"
    """Preset these settings started from (``paper``, ``cpu_demo``, ``tiny``); recorded, not re-applied."""
    output_dir: str = ""
    """Run folder (config.json, metrics.jsonl, samples.jsonl, checkpoint-*/, final/). Empty: ``runs/<name>``."""
    seed: int = 0
    """Seed of the trainer (sampling, data order) and of a ``tiny`` policy's weights."""
    save_steps: int = 50
    """Write a checkpoint (weights, optimizer, RNG, trainer state) every this many steps."""
    save_total_limit: int | None = 2
    """Keep at most this many checkpoints (None: all)."""
    resume: str = "auto"
    """``auto``: continue from the last checkpoint in the run folder if there is one; ``never``: start
    over (the folder's metrics.jsonl is cleared); or a checkpoint path."""
    save_final: bool = True
    """Save the trained policy (model or adapter + processor) to ``<run>/final`` at the end."""
    log_samples: int = 2
    """Trajectories per step written to ``samples.jsonl`` (text, turn by turn; images as ``<image>``)."""
    report_to: str = "tensorboard"
    """Where the Trainer also logs each step: ``tensorboard`` (event files in ``<run>/runs/``; view with
    ``tensorboard --logdir runs``), ``wandb``, ``trackio``, several comma-separated, or ``none``.
    ``metrics.jsonl`` is written whatever this says (the analysis reads it)."""

    # -- policy ------------------------------------------------------------------------------------
    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    """Policy: a hub id or local folder (Qwen2.5-VL / Qwen3-VL), ``tiny``, ``demo`` or ``demo-sft``."""
    protocol: str = "tags"
    """``tags`` (the paper's ``<search><img></search>`` / ``<text_search>``) or ``native`` (JSON tool calls)."""
    lora: bool = False
    """Train a LoRA adapter on the language model's linear layers (vision tower frozen)."""
    qlora: bool = False
    """Load the base in 4-bit NF4 (bitsandbytes) and train a LoRA adapter on it (implies ``lora``)."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int | None = None
    """LoRA alpha (None: 2 * r)."""
    dtype: str = "auto"
    """Weights dtype: ``auto`` (bf16 on GPU, fp32 on CPU), ``float32``, ``bfloat16``."""
    train_top_layers: int = -1
    """Full fine-tuning of only the top N language-model layers (+ final norm); the rest, the embeddings
    and the vision tower are frozen and run without autograd (the CPU demo's saving). -1: all weights.
    Ignored with LoRA."""

    # -- data --------------------------------------------------------------------------------------
    dataset: str = "world"
    """Training questions (row schema): ``world`` (the offline world's question pool), ``synthetic``
    (a few coloured-square questions with their own tiny search index; smoke runs), a folder saved with
    ``datasets.save_to_disk`` (a Dataset or a DatasetDict), or an FVQA/veRL ``.parquet`` file."""
    dataset_split: str = "train"
    """Split to use when the dataset is a DatasetDict or the world pool."""
    max_train_samples: int | None = None
    """Use at most this many rows (seeded shuffle first); None: all."""

    # -- search engines ----------------------------------------------------------------------------
    engine: str = "local"
    """Search engines: ``local`` (offline world index), ``web``, ``fvqa-cache`` (image) + ``web`` (text),
    ``synthetic`` (the synthetic dataset's index) or ``none`` (every search returns an error)."""
    index_dir: str = ""
    """Local index folder (empty: the tools' default, ``data/world/index`` or ``$MMSEARCH_INDEX_DIR``)."""
    cache_mode: str = "off"
    """Search cache: ``off``, ``read-write`` (record), ``replay-only`` (a miss is an error)."""
    cache_path: str = "data/cache/search.sqlite"
    """SQLite file of the search cache."""

    # -- protocol, budgets, reward -----------------------------------------------------------------
    max_turns: int = 3
    """Assistant turns per rollout (paper: 3); TRL's ``max_tool_calling_iterations`` is this minus 1."""
    image_budget: int = 1
    """Image searches per rollout (paper: 1)."""
    text_budget: int = 2
    """Text searches per rollout (paper: 2)."""
    image_k: int = 5
    """Image-search hits shown to the policy (paper: 5)."""
    text_k: int = 5
    """Text-search pages shown to the policy (paper: 5)."""
    grammar: str = "strict"
    """Format reward grammar: ``strict`` (the paper's four sequences) or ``flexible``."""
    penalty: float = 0.1
    """Search penalty p: a correct answer after a search earns (1 - p) (paper: 0.1)."""
    format_weight: float = 0.1
    """Format weight f: reward = (1 - f) * acc * penalty_factor + f * format (paper: 0.1)."""
    penalty_mode: str = "once"
    """``once`` (paper) or ``per_call`` ((1 - p) per search)."""
    match: str = "exact"
    """Answer matching: ``exact`` (EM after normalisation, paper) or ``subem``."""

    # -- GRPO (TRL GRPOConfig) ---------------------------------------------------------------------
    num_generations: int = 8
    """Rollouts per prompt G (paper: 8; the released script: 4)."""
    prompts_per_step: int = 128
    """Prompts per optimizer step, over all processes (paper: mini-batch 128 of 512 per rollout batch)."""
    steps_per_generation: int = 4
    """Optimizer steps per rollout batch (paper: 512 prompts / 128 = 4)."""
    gradient_accumulation_steps: int = 16
    """Micro-batches per optimizer step; the per-device batch is
    prompts_per_step * num_generations / (processes * gradient_accumulation_steps)."""
    learning_rate: float = 2e-6
    """Peak learning rate (paper: 2e-6)."""
    lr_scheduler_type: str = "constant"
    """Schedule (paper text: constant; the released script decays it with a sigmoid)."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    weight_decay: float = 0.01
    """AdamW weight decay (paper's script: 0.01)."""
    max_grad_norm: float = 1.0
    """Gradient clipping (paper: 1.0)."""
    beta: float = 0.001
    """KL coefficient against the initial policy (k3 estimator, in the loss; paper: 0.001). 0 drops the
    reference model."""
    epsilon: float = 0.2
    """PPO clip range (paper: 0.2)."""
    loss_type: str = "bnpo"
    """TRL loss aggregation. ``bnpo`` = token mean over the local micro-batch, which is what the paper's
    verl code does (``token-mean``); TRL's default ``dapo`` normalises over the global batch instead."""
    scale_rewards: str = "group"
    """Advantage scaling: ``group`` (GRPO; the paper: (r - mean) / std per prompt). Keep it: under
    ``batch`` scaling the 0.1 penalty had no effect in a CPU study; ``none`` is Dr. GRPO."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts (paper: 1.0)."""
    top_p: float = 1.0
    """Nucleus sampling (paper: 1.0)."""
    max_completion_length: int = 8192
    """Tokens of a whole rollout after the prompt: every assistant turn plus the tool-result turns and
    thumbnail tokens (paper: 8192 in total)."""
    max_steps: int = 100
    """Optimizer steps (the paper checkpoints at 50; its Fig. 5b plots 100)."""
    num_iterations: int = 1
    """Policy updates per rollout batch (GRPO's mu; paper: 1)."""
    bf16: str = "auto"
    """bf16 mixed precision: ``auto`` (on with a bf16 GPU, or a CPU with native bf16 matmuls: see
    `fast_bf16`), ``true``, ``false``."""
    gradient_checkpointing: str = "auto"
    """``auto`` (on with a GPU), ``true``, ``false``."""
    suppress_vision_tokens: bool = True
    """Never sample the vision placeholder tokens (needed by tiny random models, harmless otherwise)."""
    generation_copy: str = "auto"
    """Generate the rollouts with a bf16 copy of the model that prefills each distinct row of a batch once
    (`rl.generation_copy`): ``auto`` (on a CPU with native bf16 matmuls, without vLLM or PEFT), ``true``,
    ``false``."""
    policy_token_head: str = "auto"
    """Project the loss's LM head on the policy's own completion tokens only, and score each sequence
    without its padding (`rl.policy_head`): ``auto`` (on CPU, where TRL's fused head projects every
    position), ``true``, ``false``."""

    # -- generation backend ------------------------------------------------------------------------
    use_vllm: bool = False
    """Generate with vLLM (GPU only; needs the ``gpu`` extra)."""
    vllm_mode: str = "colocate"
    """``colocate`` (vLLM inside the training processes) or ``server`` (``trl vllm-serve`` on other GPUs)."""
    vllm_server_base_url: str | None = None
    """Server mode: the URL of ``trl vllm-serve`` (None: host/port defaults, localhost:8000)."""
    vllm_gpu_memory_utilization: float = 0.3
    """Colocate mode: GPU memory fraction for vLLM (weights + KV cache)."""
    vllm_enable_sleep_mode: bool = False
    """Colocate mode: offload vLLM's weights and cache during the optimizer step."""
    vllm_max_model_length: int | None = None
    """vLLM context length (set it: prompt + images + all turns must fit)."""

    # -- anything else -----------------------------------------------------------------------------
    grpo_overrides: dict = field(default_factory=dict)
    """Extra ``GRPOConfig`` fields passed through verbatim (e.g. ``{"top_k": 50}``); they win."""

    def __post_init__(self):
        _check(self)

    @property
    def run_dir(self) -> Path:
        """The run folder."""
        return Path(self.output_dir or os.path.join("runs", self.name))

    @property
    def max_tool_calling_iterations(self) -> int:
        """TRL's tool rounds per rollout: ``max_turns - 1`` (paper: 2)."""
        return self.max_turns - 1

    def to_dict(self) -> dict:
        """Plain JSON-able dict of every field."""
        return asdict(self)

    def replace(self, **changes) -> TrainConfig:
        """A copy with ``changes`` applied (validated)."""
        return _from_dict({**self.to_dict(), **changes})


def _choices(cfg: TrainConfig) -> list[tuple[str, object, tuple]]:
    return [
        ("preset", cfg.preset, tuple(PRESETS)),
        ("protocol", cfg.protocol, ("tags", "native")),
        ("grammar", cfg.grammar, ("strict", "flexible")),
        ("penalty_mode", cfg.penalty_mode, ("once", "per_call")),
        ("match", cfg.match, ("exact", "subem")),
        ("loss_type", cfg.loss_type, LOSS_TYPES),
        ("scale_rewards", cfg.scale_rewards, SCALE_REWARDS),
        ("vllm_mode", cfg.vllm_mode, ("colocate", "server")),
        ("cache_mode", cfg.cache_mode, ("off", "read-write", "replay-only")),
        ("engine", cfg.engine, ("local", "web", "fvqa-cache", "synthetic", "none")),
        ("bf16", cfg.bf16, ("auto", "true", "false")),
        ("gradient_checkpointing", cfg.gradient_checkpointing, ("auto", "true", "false")),
    ]


def _check(cfg: TrainConfig) -> None:
    for key, value, allowed in _choices(cfg):
        if value not in allowed:
            raise ValueError(f"TrainConfig.{key}={value!r} is not one of {list(allowed)}.")
    if cfg.num_generations < 2:
        raise ValueError("TrainConfig.num_generations must be >= 2: GRPO compares rollouts within a group.")
    if cfg.max_turns < 1:
        raise ValueError("TrainConfig.max_turns must be >= 1 (1 = answer only, no search).")
    if not 0 <= cfg.penalty <= 1 or not 0 <= cfg.format_weight <= 1:
        raise ValueError("TrainConfig.penalty and format_weight must lie in [0, 1].")
    if cfg.qlora and cfg.model == "tiny":
        raise ValueError(
            "qlora needs a checkpoint on disk; use model=demo-sft or a path, or set qlora=false."
        )


# -- loading -------------------------------------------------------------------------------------------


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in fields(TrainConfig)}


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Coerce a parsed value to the field's annotated type, or raise naming the key."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(typ)
        if value is None and type(None) in args:
            return None
        typ = next(a for a in args if a is not type(None))
        origin = typing.get_origin(typ)
    if typ is bool and isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    if typ is str and isinstance(value, bool):  # ``bf16=true`` parses as YAML bool
        return "true" if value else "false"
    if typ is str and isinstance(value, (int, float)):
        return str(value)
    if typ is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    if typ is int and isinstance(value, float) and value.is_integer():
        return int(value)
    check = origin or typ
    if check is dict and isinstance(value, dict):
        return dict(value)
    if isinstance(value, check) and not (check is int and isinstance(value, bool)):
        return value
    raise TypeError(f"TrainConfig.{key} expects {getattr(typ, '__name__', typ)}, got {value!r}.")


def _unknown(keys) -> None:
    known = [f.name for f in fields(TrainConfig)]
    bad = [k for k in keys if k not in known]
    if bad:
        hints = {k: difflib.get_close_matches(k, known, n=1) for k in bad}
        text = ", ".join(f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in hints.items())
        raise KeyError(
            f"Unknown TrainConfig keys: {text}. See `python -m mmsearch_r1.rl.train --help-config`."
        )


def _from_dict(data: dict) -> TrainConfig:
    _unknown(data)
    types_ = _field_types()
    return TrainConfig(**{k: _coerce(k, v, types_[k]) for k, v in data.items()})


def preset(preset_name: str = "paper", /, **overrides) -> TrainConfig:
    """The named preset (see `PRESETS`) with keyword ``overrides`` applied (``name=`` sets the run name)."""
    if preset_name not in PRESETS:
        raise KeyError(f"Unknown preset {preset_name!r}; choose one of {list(PRESETS)}.")
    return _from_dict({**PRESETS[preset_name], "preset": preset_name, **overrides})


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["lr=1e-5", "lora=true"]`` -> ``{"lr": 1e-05, "lora": True}`` (values parsed as YAML)."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"Override {item!r} must look like key=value (e.g. penalty=0.1).")
        value = yaml.safe_load(raw) if raw.strip() else ""
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 as a string
            try:
                value = float(value)
            except ValueError:
                pass
        out[key.strip()] = value
    return out


def read_config_file(path: str | Path) -> dict:
    """A YAML or JSON mapping of TrainConfig fields (``preset`` selects the starting point)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file {path} does not exist.")
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(
            f"Config file {path} must hold a mapping of TrainConfig fields, not {type(data).__name__}."
        )
    return data


def load_config(
    path: str | Path | None = None,
    *,
    preset: str | None = None,
    overrides: list[str] | dict | None = None,
) -> TrainConfig:
    """Preset (argument, else the file's ``preset``, else ``paper``) < file < ``overrides``."""
    data = read_config_file(path) if path else {}
    extra = parse_overrides(overrides) if isinstance(overrides, (list, tuple)) else dict(overrides or {})
    name = preset or extra.get("preset") or data.get("preset") or "paper"
    if name not in PRESETS:
        raise KeyError(f"Unknown preset {name!r}; choose one of {list(PRESETS)}.")
    merged = {**PRESETS[name], **data, **extra, "preset": name}
    return _from_dict(merged)


def coerce_config(config: TrainConfig | dict | str | Path | None, **overrides) -> TrainConfig:
    """Accept a TrainConfig, a dict, a preset name or a config file path; apply ``overrides``."""
    if config is None:
        config = preset("paper")
    elif isinstance(config, str) and config in PRESETS:
        config = preset(config)
    elif isinstance(config, (str, Path)):
        config = load_config(config)
    elif isinstance(config, dict):
        name = config.get("preset", "paper")
        config = _from_dict({**PRESETS.get(name, {}), **config})
    elif not isinstance(config, TrainConfig):
        raise TypeError(
            f"config must be a TrainConfig, dict, preset name or file path, not {type(config).__name__}"
        )
    return config.replace(**overrides) if overrides else config


def describe_fields() -> str:
    """Every field with its default and docstring (``--help-config``)."""
    import ast
    import inspect

    source = inspect.getsource(TrainConfig)
    tree = ast.parse(source)
    docs: dict[str, str] = {}
    body = tree.body[0].body
    for node, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
        ):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    lines = []
    for f in fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        lines.append(f"{f.name} = {default!r}\n    {docs.get(f.name, '')}")
    return "\n".join(lines)
