"""Load any policy the project trains: a hub or local Qwen2.5-VL / Qwen3-VL checkpoint, ``tiny``, or ``demo``.

What it does: `load_policy(name_or_path, ...)` returns a `Policy` (model, processor, and what was loaded)
with the project's chat template and response parser installed on the processor
(`mmsearch_r1.protocol.chat_template.install_protocol`, checked at load time so TRL cannot train silently with zero
tool calls). Names:

- ``"tiny"``: a randomly initialised Qwen2.5-VL for tests (`mmsearch_r1.policy.tiny.build_tiny_policy`);
- ``"demo"``: the CPU demo policy, Qwen2.5-VL with SmolLM2-135M-Instruct's language weights
  (`mmsearch_r1.policy.demo`, converted once and cached);
- ``"demo-sft"``: the demo policy after the warm start (``runs/warmstart/final``, written by notebook 02);
- anything else: a local folder (a full checkpoint, or a PEFT adapter folder whose base is loaded first)
  or a hub id, loaded with ``AutoModelForImageTextToText`` (Qwen2.5-VL, Qwen3-VL, ...).

Options: ``lora=True`` wraps the model in a PEFT LoRA adapter on the language model's linear layers
(the vision tower is left as is); ``qlora=True`` loads the weights in 4-bit NF4 with bitsandbytes first
(``prepare_model_for_kbit_training``), then adds LoRA. `Policy.save` writes model and processor to one
folder; `load_policy` on that folder reloads them exactly.

What it does not: no training (``sft.warmstart``, ``rl.train``), no generation loop (evaluation does that).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmsearch_r1.cli import UserError
from mmsearch_r1.policy.demo import DEMO_SIZES, ensure_demo_policy
from mmsearch_r1.policy.processor import ImageSizes, build_processor, load_processor
from mmsearch_r1.policy.tiny import build_tiny_policy

LORA_TARGET = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
"""PEFT ``target_modules`` regex: the language model's linear layers only (not the vision tower)."""
DEMO_SFT_DIR = Path("runs/warmstart/final")
"""Where notebook 02 (``mmsearch_r1.sft.warmstart``) saves the warm-started demo policy."""


class PolicyLoadError(UserError, OSError):
    """A policy that cannot be loaded (no such folder, an unreachable hub id): the message says what to give."""


@dataclass
class Policy:
    """A loaded policy: the model, its processor (chat template installed) and what was loaded."""

    model: Any
    """A ``PreTrainedModel`` (Qwen2.5-VL / Qwen3-VL class) or a ``peft.PeftModel`` around one."""
    processor: Any
    """The processor (tokenizer + image processor) with the protocol's chat template and parser."""
    name: str
    """What was asked for (``"tiny"``, ``"demo"``, a path or a hub id)."""
    kind: str
    """``tiny`` | ``demo`` | ``local`` | ``hub``."""
    path: str | None = None
    """Local folder the weights came from (None for ``tiny`` built in memory and for hub ids)."""
    lora: bool = False
    """A LoRA adapter is attached (trainable); the base weights are frozen."""
    qlora: bool = False
    """The base weights are 4-bit NF4 (bitsandbytes)."""
    dtype: torch.dtype | None = None
    """Compute dtype of the weights."""
    extra: dict = field(default_factory=dict)
    """Details for logs (adapter base, sizes)."""

    @property
    def tokenizer(self):
        """The processor's tokenizer."""
        return getattr(self.processor, "tokenizer", self.processor)

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of (trainable) parameters."""
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad or not trainable_only)

    def save(self, path: str | Path) -> Path:
        """Save model (or adapter) and processor to ``path``; `load_policy(path)` reloads them exactly."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        self.processor.save_pretrained(path)
        return path


def _resolve_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    try:
        return getattr(torch, str(dtype))
    except AttributeError as err:
        raise ValueError(f"unknown dtype {dtype!r}: use e.g. 'float32', 'bfloat16' or a torch.dtype") from err


def _lora_config(r: int, alpha: int | None, dropout: float, target: str | list[str]):
    from peft import LoraConfig

    return LoraConfig(
        r=r,
        lora_alpha=alpha if alpha is not None else 2 * r,
        lora_dropout=dropout,
        target_modules=target,
        bias="none",
        task_type="CAUSAL_LM",
    )


def _bnb_config(compute_dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        # the vision tower and the output layer stay in full precision (as in common QLoRA VLM recipes)
        llm_int8_skip_modules=["visual", "lm_head", "merger"],
    )


def _load_model(
    path_or_id: str, *, dtype, device_map, qlora: bool, revision: str | None, trust_remote_code: bool
):
    from transformers import AutoModelForImageTextToText

    kwargs: dict[str, Any] = {"dtype": dtype or "auto", "trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    if device_map is not None:
        kwargs["device_map"] = device_map
    if qlora:
        kwargs["quantization_config"] = _bnb_config(dtype or torch.float32)
        kwargs["dtype"] = dtype or torch.float32
    try:
        return AutoModelForImageTextToText.from_pretrained(path_or_id, **kwargs)
    except OSError as err:
        raise PolicyLoadError(
            f"cannot load a vision-language model from {path_or_id!r}: {err}. Give a local folder with "
            "config.json and weights, a hub id (needs network or a filled HF cache), 'tiny' or 'demo'."
        ) from err


def _processor_for(path_or_id: str, sizes: ImageSizes | None, protocol: str):
    try:
        return load_processor(path_or_id, sizes, protocol=protocol)
    except OSError as err:
        raise PolicyLoadError(f"cannot load a processor from {path_or_id!r}: {err}") from err


def _attach_lora(model, *, qlora: bool, lora_r: int, lora_alpha: int | None, lora_dropout: float, target):
    from peft import get_peft_model, prepare_model_for_kbit_training

    if qlora:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, _lora_config(lora_r, lora_alpha, lora_dropout, target))


def load_policy(
    name_or_path: str | Path,
    *,
    lora: bool = False,
    qlora: bool = False,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict | None = None,
    lora_r: int = 16,
    lora_alpha: int | None = None,
    lora_dropout: float = 0.05,
    lora_target: str | list[str] = LORA_TARGET,
    sizes: ImageSizes | None = None,
    protocol: str = "tags",
    revision: str | None = None,
    trust_remote_code: bool = False,
    seed: int = 0,
    attach: bool = True,
) -> Policy:
    """Load a policy by name, local folder or hub id; see the module docstring for names and options.

    ``dtype``: "float32", "bfloat16", "auto" (bf16 on GPU, fp32 on CPU) or a ``torch.dtype``; default: the
    checkpoint's own dtype (fp32 for ``tiny``/``demo``). ``qlora`` implies ``lora``. ``sizes`` overrides the
    image pixel budgets of the processor (the demo defaults to `DEMO_SIZES`). ``protocol``: "tags" (the
    paper's) or "native" (JSON tool calls). ``attach=False`` loads the (4-bit, with ``qlora``) base without a
    new adapter: what a saved adapter is loaded onto.
    """
    name = str(name_or_path)
    torch_dtype = _resolve_dtype(dtype)
    lora = (lora or qlora) and attach
    lora_kwargs = dict(lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target=lora_target)
    if name == "tiny":
        if qlora:
            raise ValueError(
                "qlora needs a checkpoint on disk: save the tiny policy first and load its folder"
            )
        model, processor = build_tiny_policy(seed=seed, sizes=sizes, protocol=protocol)
        if torch_dtype is not None:
            model = model.to(torch_dtype)
        if lora:
            model = _attach_lora(model, qlora=False, **lora_kwargs)
        return Policy(model, processor, name, "tiny", None, lora, False, torch_dtype or torch.float32)
    if name in ("demo", "demo-sft"):
        if name == "demo":
            path = ensure_demo_policy()
        else:
            path = DEMO_SFT_DIR
            if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
                raise PolicyLoadError(
                    f"no warm-started demo policy at {path}: run notebooks/02_warmstart.ipynb "
                    "(or python -m mmsearch_r1.sft.warmstart, or make demo) first"
                )
        policy = load_policy(
            path,
            lora=lora,
            qlora=qlora,
            dtype=torch_dtype or torch.float32,
            device_map=device_map,
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            lora_target=lora_target,
            sizes=sizes or DEMO_SIZES,
            protocol=protocol,
            attach=attach,
        )
        policy.name, policy.kind = name, "demo"
        return policy
    local = Path(name).expanduser()
    is_local = local.exists()
    if not is_local and _looks_like_a_path(name):
        raise PolicyLoadError(
            f"no policy folder at {name}: it does not exist (a hub id looks like 'org/name'). "
            + _who_writes(name)
        )
    if is_local and not local.is_dir():
        raise ValueError(
            f"{name!r} is a file; give the folder that holds config.json (or adapter_config.json)"
        )
    if is_local and (local / "adapter_config.json").is_file() and not (local / "config.json").is_file():
        return _load_adapter(
            local,
            lora=lora,
            qlora=qlora,
            dtype=torch_dtype,
            device_map=device_map,
            sizes=sizes,
            protocol=protocol,
            trust_remote_code=trust_remote_code,
        )
    model = _load_model(
        name,
        dtype=torch_dtype,
        device_map=device_map,
        qlora=qlora,
        revision=revision,
        trust_remote_code=trust_remote_code,
    )
    processor = _processor_for(name, sizes, protocol)
    if lora:
        model = _attach_lora(model, qlora=qlora, **lora_kwargs)
    return Policy(
        model,
        processor,
        name,
        "local" if is_local else "hub",
        str(local) if is_local else None,
        lora,
        qlora,
        getattr(model, "dtype", torch_dtype),
    )


def _looks_like_a_path(name: str) -> bool:
    """A name that cannot be a hub id ('org/name'): more than one '/', or a leading '.', '/' or '~'."""
    return name.count("/") > 1 or name.startswith((".", "/", "~")) or name.startswith("runs")


def _who_writes(name: str) -> str:
    """Which step writes a run folder like ``name``."""
    if "warmstart" in name:
        return "Run notebooks/02_warmstart.ipynb (or make demo) first."
    if name.startswith("runs/"):
        return "Train it first: notebooks/03_train.ipynb, python -m mmsearch_r1.rl.train, or make demo."
    return "Check the path."


def _load_adapter(
    path: Path, *, lora, qlora, dtype, device_map, sizes, protocol, trust_remote_code
) -> Policy:
    """A PEFT adapter folder: load its base (by name or path), then the adapter (trainable if ``lora``)."""
    from peft import PeftModel

    base_name = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = load_policy(
        base_name,
        qlora=qlora,
        dtype=dtype,
        device_map=device_map,
        sizes=sizes,
        protocol=protocol,
        trust_remote_code=trust_remote_code,
        attach=False,  # the saved adapter goes on the bare base, not on a second, fresh one
    )
    if qlora:
        from peft import prepare_model_for_kbit_training

        base.model = prepare_model_for_kbit_training(base.model, use_gradient_checkpointing=False)
    model = PeftModel.from_pretrained(base.model, str(path), is_trainable=lora or qlora)
    processor = (
        _processor_for(str(path), sizes or (DEMO_SIZES if base.kind == "demo" else None), protocol)
        if (path / "tokenizer_config.json").is_file()
        else base.processor
    )
    return Policy(
        model, processor, str(path), "local", str(path), True, qlora, base.dtype, extra={"base": base_name}
    )


def build_demo_processor(tokenizer, sizes: ImageSizes = DEMO_SIZES, protocol: str = "tags"):
    """The demo policy's processor around its tokenizer (used when converting; loading reads the folder)."""
    return build_processor(tokenizer, sizes, protocol=protocol)
