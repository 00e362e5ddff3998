"""Parameter-efficient fine-tuning through the `peft` library: LoRA, DoRA, QLoRA, prefix tuning.

LoRA (Hu et al. 2021, arXiv:2106.09685) freezes a linear layer's weight `W (out, in)` and learns
a low-rank update next to it:

    y = x Wᵀ + (alpha / r) · dropout(x) Aᵀ Bᵀ,      A (r, in) random, B (out, r) = 0 at start

so training starts from the base model's function exactly. DoRA (Liu et al. 2024,
arXiv:2402.09353) also learns a per-output-row magnitude of the merged weight. QLoRA (Dettmers
et al. 2023, arXiv:2305.14314) keeps the frozen base in 4-bit NF4 (or 8-bit) on the GPU.

We write none of that math: `peft` supplies the layers, the merge and the file format, through
its own integration API (`inject_adapter_in_model`, `get_peft_model_state_dict`,
`set_peft_model_state_dict`, `get_peft_model`), never through `transformers`' `PeftAdapterMixin`
(`model.add_adapter` / `load_adapter`): that mixin refuses peft releases older than the one it
was built for (transformers 5.24 needs peft >= 0.22.0, which was not yet published when 5.24 came
out), and it would switch every LoRA path off. The adapters are injected into the
`MiniGPTForCausalLM` *in place*, so the model keeps its class and everything built on it (the
training loop, `generate`, the fast engine) works unchanged; `model.save_pretrained(dir)` writes
the adapter alone (`adapter_model.safetensors` + `adapter_config.json`, PEFT's format, which
`peft.PeftModel.from_pretrained(base, dir)` loads), and `adapters_disabled(model)` gives the base
model back for a while (the reference policy of DPO/RL, DESIGN principle 4).

Prefix tuning / P-tuning v2 (Li & Liang 2021, arXiv:2101.00190; Liu et al. 2021,
arXiv:2110.07602) learns key/value vectors prepended to every layer's attention; `peft`
implements it by wrapping the model in a `PeftModelForCausalLM` that feeds the prefix in as
`past_key_values`, so that one is returned as a wrapper, not in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from minigpt.errors import UserError

#: The linear projections of every decoder block (Llama names); LoRA's default targets.
BLOCK_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

#: Substrings of the parameter names of PEFT adapters injected in place (LoRA/DoRA, IA³).
ADAPTER_PARAM_MARKERS = ("lora_", "ia3_")

_ADAPTER_CONFIG = "adapter_config.json"
_ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: Beside an adapter: `{"base_model_sha256": …}`, the fingerprint of the base it was trained on
#: (`minigpt.model.checks.model_fingerprint`), checked when the adapter is loaded.
ADAPTER_BASE_FILE = "adapter_base.json"


def _count(model: nn.Module, trainable_only: bool = False) -> int:
    from minigpt.model import count_parameters

    return count_parameters(model, trainable_only)


def trainable_summary(model: nn.Module) -> str:
    """One line: trainable and total parameter counts of `model` and the trainable share."""
    trainable, total = _count(model, True), _count(model)
    return f"trainable {trainable:,} / total {total:,} ({100 * trainable / max(total, 1):.2f}%)"


def has_lora(model: nn.Module) -> bool:
    """True when `model` carries adapters injected in place (`apply_lora` / `load_adapter`, or
    `transformers`' own `add_adapter` / `load_adapter`); False for a `peft.PeftModel` wrapper."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return False
    return bool(getattr(model, "_hf_peft_config_loaded", False)) or isinstance(getattr(model, "peft_config", None), dict)


def has_adapters(model: nn.Module) -> bool:
    """True when `model` carries PEFT adapters that `adapters_disabled` can switch off: injected
    in place (`has_lora`), or a `peft.PeftModel` wrapper (prefix tuning)."""
    from peft import PeftModel

    return has_lora(model) or isinstance(model, PeftModel)


def _tuner_layers(model: nn.Module) -> list[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Run the body with `model`'s PEFT adapters switched off: the base model (the reference
    policy of DPO and RL with LoRA, so no second copy is kept).

    Works for adapters injected in place and for a `peft.PeftModel` wrapper (prefix tuning).
    peft's switch also flips the adapters' `requires_grad`; every parameter's flag is restored
    on exit, so frozen adapters stay frozen and trained ones stay trainable.

    Raises:
        UserError: the model carries no adapters.
    """
    from peft import PeftModel

    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        if isinstance(model, PeftModel):
            with model.disable_adapter():
                yield
            return
        layers = _tuner_layers(model)
        if not layers:
            raise UserError("the model carries no adapters to disable")
        for layer in layers:
            layer.enable_adapters(False)
        try:
            yield
        finally:
            for layer in layers:
                layer.enable_adapters(True)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _linear_names(model: nn.Module) -> dict[str, nn.Linear]:
    """Dotted name -> module for every plain `nn.Linear` in `model`."""
    return {name: m for name, m in model.named_modules() if type(m) is nn.Linear}


def _matches(module_name: str, target: str) -> bool:
    # peft's rule for a list of targets: the full dotted name, or its tail after a dot.
    return module_name == target or module_name.endswith("." + target)


def resolve_target_modules(model: nn.Module, target_modules: Sequence[str] | str | None) -> list[str]:
    """Check every requested target names at least one linear layer of `model`."""
    if target_modules is None:
        targets = list(BLOCK_LINEARS)
    elif isinstance(target_modules, str):
        targets = [t.strip() for t in target_modules.split(",") if t.strip()]
    else:
        targets = [str(t) for t in target_modules]
    if not targets:
        raise UserError("lora target_modules is empty; name at least one linear layer (e.g. q_proj,v_proj)")
    linears = _linear_names(model)
    available = sorted({n.rsplit(".", 1)[-1] for n in linears})
    missing = [t for t in targets if not any(_matches(n, t) for n in linears)]
    if missing:
        raise UserError(
            f"lora target_modules {missing} match no linear layer of the model; available linear "
            f"module names: {', '.join(available)}"
        )
    if getattr(model.config, "tie_word_embeddings", False) and any(_matches("lm_head", t) for t in targets):
        raise UserError(
            "lora target_modules: lm_head shares its weight with model.embed_tokens "
            "(tie_word_embeddings), so an adapter on it could not be merged; drop lm_head"
        )
    return targets


def _check_qlora(quantize: str) -> None:
    """Raise a UserError naming exactly what QLoRA lacks here (bitsandbytes, CUDA)."""
    if quantize not in ("4bit", "8bit"):
        raise UserError(f"quantize must be None, '4bit' or '8bit', not {quantize!r}")
    missing = []
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        missing.append("the bitsandbytes package (pip install bitsandbytes)")
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (torch.cuda.is_available() is False)")
    if missing:
        raise UserError(
            f"QLoRA (quantize={quantize!r}) needs {' and '.join(missing)}; "
            "train plain LoRA instead (without --lora.qlora / quantize)"
        )


def _quantize_in_place(model: nn.Module, quantize: str) -> None:
    """Swap every block linear for a bitsandbytes 4-bit (NF4) or 8-bit layer on the GPU.

    Embeddings, norms and the LM head stay in full precision (as in QLoRA). bitsandbytes
    quantizes a weight when it is moved to CUDA, so the model ends up on `cuda`.
    Not exercised by the test suite (it needs bitsandbytes and a CUDA GPU).
    """
    import bitsandbytes as bnb

    device = torch.device("cuda", torch.cuda.current_device())
    for name, lin in list(_linear_names(model).items()):
        if name.rsplit(".", 1)[-1] not in BLOCK_LINEARS:
            continue
        has_bias = lin.bias is not None
        if quantize == "4bit":
            q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=has_bias, compute_dtype=torch.bfloat16, quant_type="nf4")
            q.weight = bnb.nn.Params4bit(lin.weight.data.cpu(), requires_grad=False, quant_type="nf4")
        else:
            q = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=has_bias, has_fp16_weights=False, threshold=6.0)
            q.weight = bnb.nn.Int8Params(lin.weight.data.cpu(), requires_grad=False, has_fp16_weights=False)
        if has_bias:
            q.bias = nn.Parameter(lin.bias.data.cpu(), requires_grad=False)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, q.to(device))  # quantized by this move
    model.to(device)


def record_base_path(model: nn.Module) -> None:
    """Record the base model's directory (absolute, in memory) in the adapter config and its
    fingerprint on the model, for `save_adapter` to write beside the adapter."""
    from minigpt.model.checks import model_fingerprint

    name = model.__dict__.get("name_or_path") or ""
    if name and (Path(name) / "config.json").is_file():
        for cfg in model.peft_config.values():
            cfg.base_model_name_or_path = str(Path(name).resolve())
        model.__dict__["base_model_sha256"] = model_fingerprint(name)


def apply_lora(
    model: nn.Module,
    rank: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    target_modules: Sequence[str] | str | None = None,
    use_dora: bool = False,
    quantize: str | None = None,
    verbose: bool = True,
) -> nn.Module:
    """Inject LoRA adapters into `model` in place and freeze everything else.

    After the call only the adapter matrices (`lora_A (r, in)`, `lora_B (out, r)` per target
    layer, plus DoRA's `lora_magnitude_vector (out,)`) have `requires_grad`; embeddings, norms,
    the LM head and every base weight are frozen. The update of a target layer is
    `(alpha / rank) · B A` (Hu et al. 2021, eq. 3); B starts at zero, so the model computes
    exactly the base function until trained. `model.save_pretrained(dir)` then writes only the
    adapter (PEFT format, see `save_adapter`); `with adapters_disabled(model):` runs the base.
    The injection is peft's `inject_adapter_in_model`, so it works whatever peft release
    `transformers`' own adapter integration expects.

    When `model` was loaded from a local directory (`model.name_or_path`), that directory is
    remembered as the base: `save_adapter` records where it is (relative to the adapter) and
    its fingerprint, so `minigpt generate/chat/merge` find the base from the adapter directory
    alone and `load_adapter` refuses another base.

    Args:
        model: a `MiniGPTForCausalLM` (any `transformers` model with Llama-named linears works).
        rank: r, the rank of the update.
        alpha: scaling numerator; the update is multiplied by `alpha / rank`.
        dropout: dropout on the adapter's input (LoRA branch only).
        target_modules: names of the linear layers to adapt (a leaf name such as `q_proj`
            matches it in every block; a dotted suffix such as `layers.0.self_attn.q_proj` one
            layer); a string is read as a comma-separated list. Default: all seven block
            projections q/k/v/o/gate/up/down (not `lm_head`).
        use_dora: weight-decomposed LoRA (DoRA, Liu et al. 2024, arXiv:2402.09353).
        quantize: None, "4bit" (QLoRA, NF4) or "8bit": store the frozen block linears
            quantized by bitsandbytes on the GPU (Dettmers et al. 2023, arXiv:2305.14314).
            Moves the model to CUDA.
        verbose: print "trainable X / total Y (Z%)".

    Returns:
        The same `model` object, now carrying the adapters.

    Raises:
        UserError: bad rank/alpha/dropout; a target name that matches no linear layer (the
            message lists the available ones); `lm_head` targeted while tied to the embedding;
            a model that already has adapters; `quantize` without bitsandbytes or CUDA (the
            message says which is missing).
    """
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise UserError(f"lora rank must be >= 1, not {rank}")
    if alpha <= 0:
        raise UserError(f"lora alpha must be > 0, not {alpha}")
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"lora dropout must be in [0, 1), not {dropout}")
    if has_lora(model):
        raise UserError("the model already has LoRA adapters; apply_lora to a fresh base model (or merge_lora first)")
    targets = resolve_target_modules(model, target_modules)
    if quantize is not None:
        _check_qlora(quantize)
        _quantize_in_place(model, quantize)
    model.requires_grad_(False)  # embeddings, norms, lm_head and base weights stay frozen
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, use_dora=use_dora, bias="none", task_type="CAUSAL_LM"
    )
    inject_adapter_in_model(config, model)  # peft sets model.peft_config = {"default": config}
    record_base_path(model)
    wrong = [n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
    if wrong:  # peft's contract; checked because the whole point is a frozen base
        raise RuntimeError(f"apply_lora left base parameters trainable: {wrong[:5]}")
    if verbose:
        print(f"LoRA r={rank} alpha={alpha}{' DoRA' if use_dora else ''}{f' {quantize}' if quantize else ''}: {trainable_summary(model)}")
    return model


def relative_base_path(base: str | None, adapter_dir: Path) -> str | None:
    """`base` (a local directory) as a path relative to `adapter_dir`, so a run folder does not
    record where it was trained; left as it is when it is no local directory (a hub id) or when
    no relative path joins them (another drive)."""
    if not base or not Path(base).is_dir():
        return base
    try:
        return os.path.relpath(Path(base).resolve(), adapter_dir.resolve())
    except ValueError:
        return str(Path(base).resolve())


def save_adapter(model: nn.Module, out_dir: str | Path, final_dir: str | Path | None = None) -> None:
    """Write the adapters of `model` alone, in PEFT's format, to `out_dir`.

    `adapter_config.json` (the `LoraConfig`) and `adapter_model.safetensors` (peft's
    `get_peft_model_state_dict`, keys prefixed `base_model.model.` as
    `PeftModel.save_pretrained` writes them, so `peft.PeftModel.from_pretrained(base, dir)` and
    `load_adapter` both read it). The base's directory is recorded in `base_model_name_or_path`
    relative to the adapter's folder, and the base's fingerprint in `adapter_base.json`, when
    the base came from a local directory. The files are written to a temporary name and renamed
    into place.

    Args:
        model: a model carrying LoRA/DoRA adapters.
        out_dir: the folder to write to.
        final_dir: the folder the files will end up in, when `out_dir` is a staging folder that
            is moved there afterwards (the relative base path is computed from it).

    Raises:
        UserError: the model carries no adapters.
    """
    import copy

    from peft import get_peft_model_state_dict

    if not has_lora(model):
        raise UserError("the model carries no adapters to save")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(model)  # "model.layers.0…q_proj.lora_A.weight" -> tensor
    state = {"base_model.model." + k: v.detach().contiguous().cpu() for k, v in state.items()}
    config = copy.copy(model.peft_config["default"])
    config.base_model_name_or_path = relative_base_path(config.base_model_name_or_path, Path(final_dir or out))
    write_adapter_files(out, lambda tmp: config.save_pretrained(str(tmp)), state, model.__dict__.get("base_model_sha256"))


def write_adapter_files(out: Path, write_config, state: dict[str, torch.Tensor], base_sha256: str | None) -> None:
    """Write an adapter folder in PEFT's layout: `write_config(folder)` writes
    `adapter_config.json`, `state` goes to `adapter_model.safetensors`, and the base's
    fingerprint (when known) to `adapter_base.json`. Everything is written to a temporary folder
    inside `out` first and renamed into place file by file; a fingerprint left by an older
    adapter is removed when this one has none."""
    from safetensors.torch import save_file

    tmp = out / f".tmp-adapter-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_config(tmp)
        save_file(state, str(tmp / _ADAPTER_WEIGHTS), metadata={"format": "pt"})
        names = [_ADAPTER_CONFIG, _ADAPTER_WEIGHTS]
        if base_sha256:
            (tmp / ADAPTER_BASE_FILE).write_text(json.dumps({"base_model_sha256": base_sha256}, indent=2) + "\n", encoding="utf-8")
            names.append(ADAPTER_BASE_FILE)
        elif (out / ADAPTER_BASE_FILE).exists():
            (out / ADAPTER_BASE_FILE).unlink()  # an older adapter's record would not describe this one
        for name in names:
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _strip_peft_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("base_model.model."): v for k, v in state.items()}


def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy adapter tensors (PEFT key names, with or without the `base_model.model.` prefix)
    into `model`'s injected adapters through peft's `set_peft_model_state_dict`.

    Returns:
        the keys of `state` that matched no adapter of `model` (empty when all fit).
    """
    from peft import set_peft_model_state_dict

    return list(set_peft_model_state_dict(model, _strip_peft_prefix(state)).unexpected_keys)


def read_adapter_config(adapter_dir: str | Path) -> dict:
    """The parsed `adapter_config.json` of an adapter directory.

    Raises:
        UserError: the directory does not exist, has no adapter_config.json, or it is not JSON.
    """
    path = Path(adapter_dir)
    if not path.is_dir():
        raise UserError(f"adapter directory {path} does not exist")
    cfg_file = path / _ADAPTER_CONFIG
    if not cfg_file.is_file():
        raise UserError(f"{path} is not an adapter directory: it has no {_ADAPTER_CONFIG}")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {cfg_file}: {e}") from e
    if not isinstance(cfg, dict):
        raise UserError(f"{cfg_file}: expected a JSON object")
    return cfg


# What a user can do when an adapter's recorded base cannot be found: chat and generate take no
# base option, so the way out is to record the right one or to merge.
_BASE_HINT = (
    "set base_model_name_or_path in adapter_config.json to the base model's folder, or merge the adapter "
    "into its base with `minigpt merge --model BASE --adapter ADAPTER --out MERGED` and use MERGED"
)


def _recorded_base(adapter_dir: Path, base: str) -> Path:
    """Where a recorded `base_model_name_or_path` points: absolute as it is; relative first to
    the adapter's folder (what `save_adapter` writes), then to the current directory (what
    peft and older minigpt releases wrote)."""
    if Path(base).is_absolute():
        return Path(base)
    beside = adapter_dir / base
    if (beside / "config.json").is_file() or not (Path(base) / "config.json").is_file():
        return Path(os.path.normpath(beside))
    return Path(base)


def resolved_base(adapter_dir: Path, base: str | None) -> str | None:
    """The recorded `base` as an absolute path when it names a local model directory (see
    `_recorded_base`), else as recorded (a hub id, or None)."""
    if base and (_recorded_base(adapter_dir, base) / "config.json").is_file():
        return str(_recorded_base(adapter_dir, base).resolve())
    return base


def adapter_base_path(adapter_dir: str | Path) -> Path:
    """The base model directory an adapter was trained on (`base_model_name_or_path`, a path
    absolute or relative to the adapter's folder).

    Raises:
        UserError: no adapter_config.json, no base recorded, or one that is not a local model
            directory.
    """
    cfg = read_adapter_config(adapter_dir)
    base = cfg.get("base_model_name_or_path")
    where = Path(adapter_dir) / _ADAPTER_CONFIG
    if not base:
        raise UserError(f"{where}: base_model_name_or_path is empty; {_BASE_HINT}")
    path = _recorded_base(Path(adapter_dir), base)
    if not (path / "config.json").is_file():
        raise UserError(
            f"{where}: base_model_name_or_path {base!r} is not a local model directory (no {path / 'config.json'}); "
            f"{_BASE_HINT}"
        )
    return path


def _check_base_identity(model: nn.Module, adapter_dir: Path) -> str | None:
    """Compare the fingerprint recorded beside the adapter with the model's own directory.

    Returns:
        the recorded fingerprint (None when the adapter records none).

    Raises:
        UserError: the model was loaded from a directory whose fingerprint differs.
    """
    from minigpt.model.checks import model_fingerprint

    record = adapter_dir / ADAPTER_BASE_FILE
    if not record.is_file():
        return None
    try:
        want = json.loads(record.read_text(encoding="utf-8"))["base_model_sha256"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{record}: not a readable base record ({e})") from None
    name = model.__dict__.get("name_or_path") or ""
    if not (name and (Path(name) / "config.json").is_file()):
        return want  # an in-memory base: nothing on disk to compare with
    have = model_fingerprint(name)
    if have != want:
        raise UserError(
            f"{adapter_dir}: the adapter was trained on another base model than {name} (base fingerprint "
            f"{want[:12]}…, this model {have[:12]}…); load it on its own base, or pass --allow_base_mismatch "
            "(check_base=False in Python) to load it anyway"
        )
    return want


def _check_adapter_fits(model: nn.Module, adapter_dir: Path, cfg: dict) -> None:
    """Compare every saved adapter tensor with the layer it belongs to, before touching `model`."""
    from safetensors import safe_open

    weights = adapter_dir / _ADAPTER_WEIGHTS
    if not weights.is_file():
        raise UserError(f"{adapter_dir}: no {_ADAPTER_WEIGHTS} next to {_ADAPTER_CONFIG}")
    linears = _linear_names(model)
    available = ", ".join(sorted({n.rsplit(".", 1)[-1] for n in linears}))
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():
            m = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.(lora_A|lora_B|lora_magnitude_vector|ia3_l)(?:\.\w+)?(?:\.weight)?", key)
            if m is None:
                raise UserError(f"{weights}: unexpected tensor {key!r} (not a LoRA or IA³ weight)")
            module, kind = m.group(1), m.group(2)
            lin = linears.get(module)
            if lin is None:
                raise UserError(
                    f"{adapter_dir}: the adapter has weights for {module!r}, which is not a linear layer of this "
                    f"base model (target_modules {cfg.get('target_modules')}; available: {available}); "
                    "was it trained on a different base?"
                )
            shape = tuple(f.get_slice(key).get_shape())
            if kind == "ia3_l":  # IA³: (out, 1) scales an output, (1, in) a feed-forward module's input
                want = shape if shape in ((lin.out_features, 1), (1, lin.in_features)) else (lin.out_features, 1)
            else:
                want = {"lora_A": (shape[0], lin.in_features), "lora_B": (lin.out_features, shape[-1]), "lora_magnitude_vector": (lin.out_features,)}[kind]
            if shape != want:
                raise UserError(
                    f"{adapter_dir}: {key} has shape {shape} but this base's {module} is Linear(in={lin.in_features}, "
                    f"out={lin.out_features}) (expected {want}); the adapter was trained on a different base model"
                )


def load_adapter(model: nn.Module, adapter_dir: str | Path, trainable: bool = False, check_base: bool = True) -> nn.Module:
    """Load a saved LoRA/DoRA adapter into `model` in place (its base must be the one trained on).

    Args:
        model: the base `MiniGPTForCausalLM`, without adapters.
        adapter_dir: a directory written by `save_pretrained` of an adapter-carrying model.
        trainable: keep the adapter weights trainable (to continue training); default frozen.
        check_base: when the adapter records its base's fingerprint (`adapter_base.json`) and
            `model` was loaded from a local directory, refuse a model whose fingerprint
            differs (`minigpt.model.checks.model_fingerprint`).

    Returns:
        The same `model`, with the adapter active.

    Raises:
        UserError: no adapter_config.json / adapter_model.safetensors, a non-LoRA adapter
            (prefix tuning: use `peft.PeftModel.from_pretrained`), a model that already has
            adapters, an adapter whose layers or shapes do not exist in this base (trained
            for different target modules or a different model size), or (with `check_base`)
            a base other than the one recorded.
    """
    path = Path(adapter_dir)
    cfg = read_adapter_config(path)
    from minigpt.model.adapters import BOTTLENECK_TYPE, has_bottleneck_adapters, load_bottleneck_adapters

    if cfg.get("peft_type") == BOTTLENECK_TYPE:
        if has_lora(model) or has_bottleneck_adapters(model):
            raise UserError("the model already has adapters; load the adapter into a fresh base model")
        if check_base:
            _check_base_identity(model, path)
        return load_bottleneck_adapters(model, path, trainable=trainable)
    if cfg.get("peft_type") not in ("LORA", "IA3"):
        raise UserError(
            f"{path / _ADAPTER_CONFIG}: peft_type {cfg.get('peft_type')!r} cannot be loaded in place (LORA, IA3 and "
            "bottleneck adapters can); load it with peft.PeftModel.from_pretrained(base, dir)"
        )
    if has_lora(model):
        raise UserError("the model already has LoRA adapters; load the adapter into a fresh base model")
    _check_adapter_fits(model, path, cfg)
    sha = _check_base_identity(model, path) if check_base else None
    from peft import PeftConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    config = PeftConfig.from_pretrained(str(path))
    config.inference_mode = not trainable
    inject_adapter_in_model(config, model)
    config.base_model_name_or_path = resolved_base(path, cfg.get("base_model_name_or_path"))
    if sha:
        model.__dict__["base_model_sha256"] = sha
    result = set_peft_model_state_dict(model, _strip_peft_prefix(load_file(str(path / _ADAPTER_WEIGHTS))))
    missing = [k for k in result.missing_keys if any(m in k for m in ADAPTER_PARAM_MARKERS)]
    if result.unexpected_keys or missing:
        _remove_adapters(model, merge=False)  # the base stays as it was
        raise UserError(f"{path}: adapter weights do not match its config (unexpected {result.unexpected_keys[:3]}, missing {missing[:3]})")
    for name, p in model.named_parameters():
        p.requires_grad_(trainable and any(m in name for m in ADAPTER_PARAM_MARKERS))
    return model


def _is_adapter_renaming(conversion) -> bool:
    patterns = [str(p) for p in getattr(conversion, "source_patterns", [])]
    return any(p.startswith("base_model.model.") or "lora_" in p for p in patterns)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the active adapters into the base weights and remove the LoRA layers.

    Each wrapped linear's weight becomes `W + (alpha / r) · B A` (DoRA: its weight-decomposed
    form) through `peft`'s own `merge`, then the wrapper is replaced by its base `nn.Linear`.
    The result is a plain model (same class, the base's parameter names, all parameters
    trainable again) whose logits equal the adapted model's up to float rounding.

    Returns:
        The same `model` object, without adapters.

    Raises:
        UserError: the model has no adapters, or its base is quantized (merge into a
            full-precision copy of the base instead: `load_adapter` then `merge_lora`).
    """
    from minigpt.model.adapters import has_bottleneck_adapters

    if has_bottleneck_adapters(model):
        raise UserError(
            "bottleneck adapters are non-linear and cannot be merged into the weights; serve the adapter "
            "directory as it is, or take the adapters out with minigpt.model.adapters.remove_bottleneck_adapters"
        )
    if not has_lora(model):
        raise UserError("the model has no LoRA adapters to merge")
    if any(type(m.get_base_layer()) is not nn.Linear for m in _tuner_layers(model)):
        raise UserError("cannot merge adapters into a quantized (QLoRA) base; load the adapter into a full-precision base and merge that")
    _remove_adapters(model, merge=True)
    model.requires_grad_(True)
    return model


def _remove_adapters(model: nn.Module, merge: bool) -> None:
    """Replace every peft layer by its base `nn.Linear`, first folding the adapter into the
    base weight when `merge` (peft's `merge(safe_merge=True)`, which raises on a non-finite
    result), and forget the adapter config."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]:
        if merge:
            module.enable_adapters(True)
            module.merge(safe_merge=True)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, module.get_base_layer())
    if "peft_config" in model.__dict__:
        del model.peft_config
    model._hf_peft_config_loaded = False
    # Drop the adapter key renamings transformers' `model.load_adapter` leaves on the model, so
    # save_pretrained writes the plain model's key names.
    conversions = getattr(model, "_weight_conversions", None)
    if conversions:
        model._weight_conversions = [c for c in conversions if not _is_adapter_renaming(c)]


def apply_prefix_tuning(
    model: nn.Module, num_virtual_tokens: int = 20, prefix_projection: bool = False, verbose: bool = True
):
    """Wrap `model` for prefix tuning / P-tuning v2 and freeze all its weights.

    Every layer gets `num_virtual_tokens` learned key/value vectors prepended to its attention
    (the prefix is fed as `past_key_values`, so the model's own cache path does the work): the
    trainable tensor is `(num_virtual_tokens, layers · 2 · kv_heads · head_dim)`. With
    `prefix_projection` the prefix is produced by a two-layer MLP (Li & Liang 2021,
    arXiv:2101.00190); without, the vectors are learned directly (P-tuning v2, Liu et al.
    2021, arXiv:2110.07602).

    Unlike LoRA this cannot be done in place: it returns `peft`'s `PeftModelForCausalLM`
    around `model`; train that object, call its `generate`, `save_pretrained(dir)` writes
    the prefix alone, and `peft.PeftModel.from_pretrained(base, dir)` loads it. The prefix
    cannot be merged into the weights, and the fast `GenerationEngine` does not apply it.

    Raises:
        UserError: `num_virtual_tokens` < 1.
    """
    from peft import PrefixTuningConfig

    if num_virtual_tokens < 1:
        raise UserError(f"num_virtual_tokens must be >= 1, not {num_virtual_tokens}")
    config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens, prefix_projection=prefix_projection)
    return wrap_with_peft(model, config, f"prefix tuning ({num_virtual_tokens} virtual tokens)", verbose)


def wrap_with_peft(model: nn.Module, config, label: str, verbose: bool = True):
    """`peft.get_peft_model(model, config)` for the methods that cannot be injected in place
    (prefix and prompt tuning): every model weight frozen, the base's local directory (when
    `model` was loaded from one) recorded as `base_model_name_or_path`, and with `verbose` the
    trainable share printed after `label`. Returns the `PeftModelForCausalLM`."""
    from peft import get_peft_model

    peft_model = get_peft_model(model, config)
    name = model.__dict__.get("name_or_path") or ""
    if name and (Path(name) / "config.json").is_file():
        peft_model.peft_config["default"].base_model_name_or_path = str(Path(name).resolve())
    if verbose:
        print(f"{label}: {trainable_summary(peft_model)}")
    return peft_model
