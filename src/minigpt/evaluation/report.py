"""A run's report card (`minigpt report RUN`), in the spirit of nanochat's: one Markdown page
(and an HTML version with the plots inline) that says on what machine a run trained, what each
stage did (steps, tokens, wall time, tokens/s, MFU), where it ended (bits per byte, losses,
accuracies, rewards, reply lengths), how it got there (loss and reward curves) and what the
final model says.

It reads what every minigpt command writes into its run directory: `run.json` (the settings),
`metrics.jsonl` (one row per logged step), `environment.json` (the machine, written by the
training loop), `eval.json` (`minigpt gym`), `config.json` and `model.safetensors` (the model),
and `quickstart.json` (the quickstart's headline figures). A folder of stages (a pipeline or a
quickstart) gets one section per stage, in the order they were trained.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from minigpt.errors import UserError

#: First line of every report this module writes: a report file without it is not ours to replace.
MARKER = "<!-- minigpt report -->"

#: Stage kinds whose final model is a chat model (samples are conversations).
CHAT_KINDS = frozenset({"sft", "dpo", "grpo", "ppo", "distill"})
#: Stage kinds whose final model continues text (samples are continuations).
TEXT_KINDS = frozenset({"pretrain"})


@dataclass
class StageRun:
    """One run directory as the report sees it.

    Attributes:
        path: the run directory.
        name: its folder name (`pretrain`, `sft`, `hybrid`, ...).
        kind: the command that wrote it (`run.json`'s `stage`: pretrain, sft, dpo, grpo, ppo,
            reward, mlm, contrastive, distill, gym).
        run: `run.json`.
        environment: `environment.json`, or None when the run did not record one.
        rows: the rows of `metrics.jsonl` (rows cut short by a kill are left out).
        evaluation: `eval.json` (gym), or None.
    """

    path: Path
    name: str
    kind: str
    run: dict
    environment: dict | None
    rows: list[dict]
    evaluation: dict | None = None


@dataclass
class Sample:
    """One sample of the final model: a prompt and what the model answered (greedy)."""

    prompt: str
    reply: str
    thinking: str = ""


@dataclass
class Report:
    """Everything a report page shows: the stages, the machine, samples per stage, the
    headline figures of a quickstart, and each stage's plot (a PNG path)."""

    root: Path
    stages: list[StageRun]
    headline: dict | None = None
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    plots: dict[str, Path] = field(default_factory=dict)
    peaks: dict[str, float] = field(default_factory=dict)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def read_metrics(path: Path) -> list[dict]:
    """The rows of a `metrics.jsonl` (an empty list when it does not exist); a line that is not
    a JSON object (a row cut short by a kill) is skipped."""
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def load_stage(path: str | Path) -> StageRun:
    """Read one run directory.

    Raises:
        UserError: no `run.json` in it, or a JSON file that does not parse (named with its line).
    """
    path = Path(path)
    run_file = path / "run.json"
    if not run_file.is_file():
        raise UserError(f"{path}: no run.json; give a run directory written by a minigpt command")
    run = _read_json(run_file)
    if not isinstance(run, dict):
        raise UserError(f"{run_file}: expected a JSON object")
    env_file, eval_file = path / "environment.json", path / "eval.json"
    return StageRun(
        path=path,
        name=path.name,
        kind=str(run.get("stage", "run")),
        run=run,
        environment=_read_json(env_file) if env_file.is_file() else None,
        rows=read_metrics(path / "metrics.jsonl"),
        evaluation=_read_json(eval_file) if eval_file.is_file() else None,
    )


def find_stages(root: str | Path) -> list[StageRun]:
    """The run directories under `root`: `root` itself when it holds a `run.json`, else each
    sub-folder that does, in training order (a stage whose `run.json` names another stage's
    folder as its `model` comes after it; otherwise by the time `run.json` was written).

    Raises:
        UserError: `root` is not a folder, or neither it nor its sub-folders hold a run.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder")
    if (root / "run.json").is_file():
        return [load_stage(root)]
    stages = [load_stage(p) for p in sorted(root.iterdir()) if p.is_dir() and (p / "run.json").is_file()]
    if not stages:
        raise UserError(f"{root}: no run.json here or in its sub-folders; give a run directory written by a minigpt command")
    by_path = {s.path.resolve(): s for s in stages}

    def parent(stage: StageRun) -> StageRun | None:
        model = stage.run.get("model")
        if isinstance(model, str) and model:
            return by_path.get(Path(model).resolve())
        return None

    def depth(stage: StageRun, seen: frozenset = frozenset()) -> int:
        up = parent(stage)
        return 0 if up is None or up.path in seen else 1 + depth(up, seen | {stage.path})

    return sorted(stages, key=lambda s: (depth(s), (s.path / "run.json").stat().st_mtime, s.name))


# ------------------------------------------------------------------------------------- figures


def last(rows: Iterable[dict], key: str) -> Any:
    """The value of `key` in the last row that has it (None when no row has it)."""
    value = None
    for row in rows:
        if key in row:
            value = row[key]
    return value


def model_size(path: Path) -> tuple[int, dict] | None:
    """`(parameter count, config.json)` of the model saved in `path` (from the safetensors
    header: nothing is loaded), or None when `path` holds no full model (an adapter run)."""
    weights, config = path / "model.safetensors", path / "config.json"
    if not (weights.is_file() and config.is_file()):
        return None
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        count = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return count, _read_json(config)


def context_length(stage: StageRun) -> int | None:
    """The tokens per training row: `block_size` (pretraining) or `max_length` (SFT, DPO...)."""
    for key in ("block_size", "max_length"):
        value = stage.run.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def same_machine(environment: dict | None) -> bool:
    """True when `environment` (a run's `environment.json`) names this host and this CPU."""
    if not environment:
        return False
    from minigpt.train.hardware import cpu_name

    return environment.get("host") == socket.gethostname() and environment.get("cpu") == cpu_name()


def throughput(stage: StageRun, peaks: dict[str, float] | None = None) -> dict[str, float]:
    """Steps, tokens, seconds, tokens/s and (where it can be known) MFU of a stage.

    `seconds` is the run's clock (`time_s` of its last row, evaluations between steps
    included); tokens/s divides by the training part of it (less `eval_time_s`).

    MFU = tokens/s × FLOPs per token ÷ the matmul peak of the stage's precision, the peak
    measured on this machine (`peaks`, by precision): given only when the run trained on this
    machine's CPU, for stages that train on fixed-length rows (not online RL, whose time goes
    to generation). FLOPs per token: `minigpt.train.hardware.flops_per_token`.
    """
    rows = stage.rows
    out: dict[str, float] = {}
    steps = [r["step"] for r in rows if isinstance(r.get("step"), (int, float))]
    if stage.kind == "gym" and stage.evaluation is not None:
        for key in ("steps", "seconds"):
            if isinstance(stage.evaluation.get(key), (int, float)):
                out[key] = float(stage.evaluation[key])
        return out
    if steps:
        out["steps"] = float(max(steps))
    tokens, seconds = last(rows, "train/tokens"), last(rows, "time_s")
    evaluating = last(rows, "eval_time_s")  # the evaluations between steps, inside time_s
    if isinstance(seconds, (int, float)) and seconds > 0:
        out["seconds"] = float(seconds)
    if isinstance(tokens, (int, float)) and tokens > 0:
        out["tokens"] = float(tokens)
        training = out.get("seconds", 0.0) - (evaluating if isinstance(evaluating, (int, float)) else 0.0)
        if training > 0:
            out["tokens_per_s"] = tokens / training
    precision = (stage.environment or {}).get("precision")
    seq = context_length(stage)
    if "tokens_per_s" in out and peaks and precision in peaks and seq and stage.kind not in ("grpo", "ppo"):
        size = model_size(stage.path)
        if size is not None:
            from minigpt.train.hardware import flops_per_token

            count, config = size
            per_token = flops_per_token(count, int(config.get("num_hidden_layers", 0)), int(config.get("hidden_size", 0)), seq)
            out["mfu"] = out["tokens_per_s"] * per_token / peaks[precision]
            out["parameters"] = float(count)
    return out


#: Final figures a stage reports, by metric name: (label, format). Keys absent from a run are
#: left out; `_before` twins (the quickstart's evaluations before a stage) show as "before → after".
FINAL_METRICS = {
    "val_bpb": ("validation bits per byte", "{:.3f}"),
    "val_loss": ("validation loss (nats)", "{:.3f}"),
    "val_ppl": ("validation perplexity", "{:.2f}"),
    "val_accuracy": ("validation accuracy", "{:.1%}"),
    "val_reward": ("held-out reward", "{:.3f}"),
    "val_reward/answer": ("held-out answer accuracy", "{:.1%}"),
    "val_completion_length": ("held-out reply length (tokens)", "{:.1f}"),
    "val_margin": ("validation reward margin", "{:.3f}"),
    "val_mlm_accuracy": ("masked-token accuracy", "{:.1%}"),
    "train/loss": ("last training loss", "{:.4f}"),
    "train/mean_reward": ("last mean reward", "{:.3f}"),
    "train/completion_length": ("last reply length (tokens)", "{:.1f}"),
    "train/kl": ("last KL to the reference", "{:.4f}"),
}


def final_metrics(stage: StageRun) -> list[tuple[str, str]]:
    """`(label, value)` pairs of a stage's end state: validation figures, the last training
    loss and reward, and a gym run's deterministic evaluation (mean ± std return)."""
    out = []
    if stage.evaluation is not None and "mean_return" in stage.evaluation:
        ev = stage.evaluation
        out.append(("evaluation return (deterministic)", f"{ev['mean_return']:.2f} ± {ev.get('std_return', float('nan')):.2f} "
                                                         f"over {len(ev.get('episodes', []))} episodes"))
    for key, (label, fmt) in FINAL_METRICS.items():
        value = last(stage.rows, key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        before = last(stage.rows, f"{key}_before")
        text = fmt.format(value)
        if isinstance(before, (int, float)) and not isinstance(before, bool):
            text = f"{fmt.format(before)} → {text}"
        out.append((label, text))
    return out


# ------------------------------------------------------------------------------------- plots


def plot_stage(stage: StageRun, out: Path) -> Path | None:
    """The stage's curves as a PNG at `out` (written atomically): training loss against steps
    with the validation loss, and the reward and reply length of RL stages beside it; a gym
    run's episode returns. None (and no file) when the run logged nothing to plot."""
    rows = stage.rows
    panels = []
    if stage.kind == "gym":
        points = [(r["step"], r["episode_return"]) for r in rows if "episode_return" in r]
        if points:
            panels.append(("episode return", "environment steps", [("episode return", points, ".")]))
    else:
        loss = [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]
        val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
        if loss or val:
            panels.append(("loss", "step", [("train", loss, "-"), ("validation", val, "o-")]))
        reward = [(r["step"], r["train/mean_reward"]) for r in rows if "train/mean_reward" in r]
        length = [(r["step"], r["train/completion_length"]) for r in rows if "train/completion_length" in r]
        if reward:
            panels.append(("mean reward", "step", [("reward", reward, "-")]))
        if length:
            panels.append(("reply length (tokens)", "step", [("reply length", length, "-")]))
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (title, xlabel, series) in zip(axes[0], panels):
        for label, points, style in series:
            if points:
                x, y = zip(*points)
                ax.plot(x, y, style, label=label, markersize=3, alpha=0.8 if style == "." else 1.0)
        ax.set_title(f"{stage.name}: {title}")
        ax.set_xlabel(xlabel)
        if sum(1 for _, p, _ in series if p) > 1:
            ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, out)
    return out


# ------------------------------------------------------------------------------------- samples


def default_prompts(stage: StageRun, count: int = 3) -> list[str]:
    """Prompts for samples when none are given: the first user messages (chat stages) or the
    first 40 characters of the first documents (pretraining) of the stage's evaluation data,
    else its training data; an empty list when those files are gone."""
    from minigpt.data.loaders import iter_documents, iter_records

    sources = [stage.run.get("eval_data")] + list(stage.run.get("data") or [])
    files = [s for s in sources if isinstance(s, str) and s and Path(s).is_file()]
    if not files:
        return []
    prompts: list[str] = []
    if stage.kind in TEXT_KINDS:
        for doc in iter_documents(files[0]):
            text = " ".join(str(doc).split())[:40].rsplit(" ", 1)[0]
            if text:
                prompts.append(text)
            if len(prompts) == count:
                break
        return prompts
    from minigpt.tokenizer.chat import SkipRecord, normalize_messages

    for where, record in iter_records(files[0]):
        text = None
        if isinstance(record, dict) and isinstance(record.get("prompt"), str):
            text = record["prompt"]
        else:
            try:
                messages = normalize_messages(record, where=where)
            except (UserError, SkipRecord):
                continue
            text = next((m["content"] for m in messages if m["role"] == "user"), None)
        if text and text not in prompts:
            prompts.append(text)
        if len(prompts) == count:
            break
    return prompts


def sample_replies(stage: StageRun, prompts: list[str], max_new_tokens: int = 96) -> list[Sample]:
    """Greedy samples of the stage's final model: replies through the chat template for chat
    stages, continuations for pretraining; an empty list for other kinds or without a model.

    Raises:
        UserError: the model directory cannot be loaded (from `load_model_and_tokenizer`).
    """
    if not prompts or stage.kind not in CHAT_KINDS | TEXT_KINDS:
        return []
    if not ((stage.path / "config.json").is_file() or (stage.path / "adapter_config.json").is_file()):
        return []
    from minigpt.inference.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(stage.path, device="cpu")
    if stage.kind in CHAT_KINDS and getattr(tok, "chat_template", None):
        return chat_samples(model, tok, prompts, max_new_tokens)
    from minigpt.inference.engine import GenerationEngine

    engine = GenerationEngine(model)
    samples = []
    for prompt in prompts:
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        out = engine.generate([ids], max_new_tokens=max_new_tokens, temperature=0, repetition_penalty=1.1)
        samples.append(Sample(prompt, tok.decode(out.completion_ids[0][out.completion_mask[0].bool()], skip_special_tokens=True)))
    return samples


def chat_samples(model, tok, prompts: list[str], max_new_tokens: int = 96) -> list[Sample]:
    """One fresh greedy conversation per prompt (`ChatSession`, repetition penalty 1.1): the
    reply's answer and its `<think>` part, stripped. The quickstart's scripted chat and the
    report's samples of chat stages are these."""
    from minigpt.inference.chat import ChatSession

    session = ChatSession(model, tok, max_new_tokens=max_new_tokens, temperature=0.0, repetition_penalty=1.1)
    samples = []
    for prompt in prompts:
        session.reset()
        reply = session.reply(prompt)
        samples.append(Sample(prompt, reply.answer.strip(), (reply.thinking or "").strip()))
    return samples


# ------------------------------------------------------------------------------------- pages


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


_MARKDOWN_SPECIAL = set("\\`*_{}[]()#+-.!>")


def _text(value: Any) -> str:
    """Model output or a prompt as literal Markdown text: the characters Markdown could read as
    markup backslash-escaped, `<` written as `&lt;` (no raw HTML), line breaks as spaces."""
    text = " ".join(str(value).split())
    return "".join("&lt;" if ch == "<" else "\\" + ch if ch in _MARKDOWN_SPECIAL else ch for ch in text)


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _environment_rows(stages: list[StageRun]) -> list[tuple[str, str]]:
    env = next((s.environment for s in stages if s.environment), None)
    if env is None:
        return [("recorded", "no (these runs wrote no environment.json)")]
    cpu = env.get("cpu", "?")
    flags = ", ".join(env.get("cpu_flags") or []) or "none listed"
    rows = [
        ("host", env.get("host", "?")),
        ("CPU", f"{cpu} ({env.get('cpu_count', '?')} cores; features: {flags})"),
        ("device", env.get("device", "?") + (f" ({env['gpu']})" if env.get("gpu") else "")),
        ("torch threads", env.get("torch_threads", "?")),
        ("precision", env.get("precision", "?")),
        ("processes", env.get("world_size", 1)),
        ("software", f"Python {env.get('python', '?')}, torch {env.get('torch', '?')}, transformers "
                     f"{env.get('transformers', '?')}, minigpt {env.get('minigpt', '?')}"),
        ("platform", env.get("platform", "?")),
    ]
    others = {s.environment.get("host") for s in stages if s.environment} - {env.get("host")}
    if others:
        rows.append(("note", f"some stages ran on other hosts too: {', '.join(sorted(others))}"))
    return rows


#: The quickstart's headline figures (`quickstart.json`), by key: (label, format).
HEADLINE = {
    "pretrain_val_bpb": ("pretraining validation bits per byte", "{:.3f}"),
    "val_loss_before": ("SFT held-out loss before SFT (nats)", "{:.3f}"),
    "val_loss": ("SFT held-out loss after SFT (nats)", "{:.3f}"),
    "sft_accuracy": ("held-out arithmetic accuracy after SFT", "{:.1%}"),
    "arithmetic_accuracy": ("held-out arithmetic accuracy before GRPO", "{:.1%}"),
    "grpo_accuracy": ("held-out arithmetic accuracy after GRPO", "{:.1%}"),
    "wall_seconds": ("wall time", "{:.0f} s"),
}


def render_markdown(report: Report, image_dir: Path | None = None) -> str:
    """The report as Markdown. Plots are linked relative to `image_dir`'s parent (the folder of
    the page), so the page and its `_files` folder can move together."""
    out = [MARKER, f"# minigpt report: {report.root.name}", "", f"Run folder: `{report.root}`", ""]
    if report.headline:
        out += ["## Headline", "", "| figure | value |", "|---|---|"]
        for key, (label, fmt) in HEADLINE.items():
            value = report.headline.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out.append(f"| {label} | {fmt.format(value)} |")
        out.append("")
    out += ["## Environment", "", "| item | value |", "|---|---|"]
    out += [f"| {k} | {_cell(v)} |" for k, v in _environment_rows(report.stages)]
    if report.peaks:
        peaks = ", ".join(f"{p}: {v / 1e12:.3f} TFLOP/s" for p, v in report.peaks.items())
        out.append(f"| matmul peak (measured now, this machine) | {peaks} |")
    out.append("")
    out += ["## Stages", "", "| stage | command | steps | tokens | wall time | tokens/s | MFU |", "|---|---|---|---|---|---|---|"]
    figures = {s.name: throughput(s, report.peaks) for s in report.stages}
    for s in report.stages:
        f = figures[s.name]
        cells = [
            s.name,
            f"`minigpt {s.kind}`",
            f"{f['steps']:,.0f}" if "steps" in f else "–",
            f"{f['tokens'] / 1e6:.2f} M" if "tokens" in f else "–",
            _duration(f["seconds"]) if "seconds" in f else "–",
            f"{f['tokens_per_s']:,.0f}" if "tokens_per_s" in f else "–",
            f"{f['mfu']:.1%}" if "mfu" in f else "–",
        ]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    for s in report.stages:
        out += [f"## {s.name} (`minigpt {s.kind}`)", ""]
        settings = _key_settings(s)
        if settings:
            out += ["Settings: " + "; ".join(f"{k} {v}" for k, v in settings), ""]
        metrics = final_metrics(s)
        if metrics:
            out += ["| final figure | value |", "|---|---|"] + [f"| {k} | {_cell(v)} |" for k, v in metrics] + [""]
        plot = report.plots.get(s.name)
        if plot is not None:
            rel = plot.relative_to(image_dir.parent) if image_dir is not None else plot
            out += [f"![{s.name} curves]({rel.as_posix()})", ""]
        samples = report.samples.get(s.name) or []
        if samples:
            out += ["Samples (greedy):", ""]
            for sample in samples:
                out.append(f"> **prompt:** {_text(sample.prompt)}  ")
                if sample.thinking:
                    out.append(f"> *thinking:* {_text(sample.thinking)}  ")
                out.append(f"> **{'reply' if s.kind in CHAT_KINDS else 'continuation'}:** {_text(sample.reply)}")
                out.append("")
    return "\n".join(out).rstrip() + "\n"


def _key_settings(stage: StageRun) -> list[tuple[str, str]]:
    run, out = stage.run, []
    model = run.get("model")
    if isinstance(model, dict) and model.get("preset"):
        out.append(("model preset", str(model["preset"])))
    elif isinstance(model, str):
        out.append(("from", f"`{Path(model).name}`"))
    train = run.get("train") if isinstance(run.get("train"), dict) else {}
    for key in ("lr", "batch_size", "grad_accum", "max_steps", "seed"):
        if train.get(key) is not None:
            out.append((f"train.{key}", str(train[key])))
    for key in ("algo", "env", "total_steps", "block_size", "max_length"):
        if run.get(key) is not None:
            out.append((key, str(run[key])))
    return out


def render_html(markdown_text: str, page_dir: Path) -> str:
    """The Markdown page as one self-contained HTML file, rendered by the chat page's renderer
    (`minigpt.inference.web.render_markdown`: CommonMark with tables, raw HTML escaped), every
    image linked from `page_dir` inlined as a base64 data URI."""
    from minigpt.inference.web import render_markdown as to_html

    body = to_html(markdown_text.replace(MARKER + "\n", ""))

    def inline(match: re.Match) -> str:
        src = html.unescape(match.group(1))
        path = page_dir / src
        if not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([^"]+\.png)"', inline, body)
    style = ("body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
             "img{max-width:100%}blockquote{border-left:3px solid #ccc;margin:.5em 0;padding:.2em .8em;color:#444}"
             "code{background:#f3f3f3;padding:0 .2em}")
    return f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>minigpt report</title><style>{style}</style></head>\n<body>\n{body}\n</body></html>\n"


def build_report(root: str | Path, image_dir: Path, samples: dict[str, list[Sample]] | None = None,
                 prompts: list[str] | None = None, num_samples: int = 3, measure_peak: bool = True,
                 max_new_tokens: int = 96, progress: Callable[[str], Any] | None = None) -> Report:
    """Read every stage under `root`, draw its plots into `image_dir`, take samples and measure
    this machine's matmul peak when the runs trained on it.

    Args:
        root: a run directory, or a folder of them (pipeline, quickstart).
        image_dir: where the PNGs go (created).
        samples: samples already taken, by stage name (the quickstart passes its own); stages
            not in it are sampled here.
        prompts: prompts for the samples (default: `default_prompts` of each stage).
        num_samples: samples per stage (0 = none).
        measure_peak: measure the matmul peak for MFU (about a second per precision).
        max_new_tokens: tokens per sample at most.
        progress: called with one line before each slow part (plots, each stage's samples,
            the peak measurement).

    Raises:
        UserError: see `find_stages`, `sample_replies`.
    """
    say = progress or (lambda line: None)
    root = Path(root)
    stages = find_stages(root)
    headline = _read_json(root / "quickstart.json") if (root / "quickstart.json").is_file() else None
    report = Report(root=root, stages=stages, headline=headline)
    say(f"report: {len(stages)} stage(s) ({', '.join(s.name for s in stages)}); drawing their curves")
    for s in stages:
        plot = plot_stage(s, image_dir / f"{s.name}.png")
        if plot is not None:
            report.plots[s.name] = plot
    given = samples or {}
    for s in stages:
        if s.name in given:
            report.samples[s.name] = given[s.name][:num_samples] if num_samples else []
        elif num_samples > 0 and s.kind in CHAT_KINDS | TEXT_KINDS:
            asked = (prompts or default_prompts(s, num_samples))[:num_samples]
            if asked:
                say(f"report: {len(asked)} greedy sample(s) of {s.name}")
            report.samples[s.name] = sample_replies(s, asked, max_new_tokens)
    if measure_peak:
        import torch

        from minigpt.train.hardware import matmul_peak

        for s in stages:
            env = s.environment
            precision = (env or {}).get("precision")
            if same_machine(env) and str(env.get("device", "")).startswith("cpu") and precision not in report.peaks:
                say(f"report: measuring this machine's {precision} matmul peak for MFU")
                dtype = torch.bfloat16 if precision == "bf16" else torch.float32
                report.peaks[precision] = matmul_peak(dtype)
    return report


def write_report(root: str | Path, out: str | Path | None = None, **kwargs: Any) -> tuple[Path, Path, Report]:
    """Build the report of `root` (`build_report`, which takes the keyword arguments) and write
    `out` (default `ROOT/report.md`), `out` with the suffix `.html`, and the plots in
    `<out stem>_files/`; every file atomically.

    Returns `(markdown path, html path, the Report)`.

    Raises:
        UserError: a page at `out` (or its HTML twin) that this module did not write (it is the
            user's: choose another `--out`), or see `build_report`.
    """
    from minigpt.train.checkpoint import atomic_write_text

    root = Path(root)
    md_path = Path(out) if out is not None else root / "report.md"
    if md_path.suffix.lower() != ".md":
        raise UserError(f"--out {md_path}: give a .md file name (the HTML page is written beside it)")
    html_path = md_path.with_suffix(".html")
    for path in (md_path, html_path):
        if path.is_dir():
            raise UserError(f"--out {path} is a folder; give a file name inside it (e.g. {path / 'report.md'})")
        if path.is_file() and MARKER not in path.read_text(encoding="utf-8", errors="replace")[:4096]:
            raise UserError(f"{path} exists and is not a minigpt report; choose another --out")
    image_dir = md_path.with_name(md_path.stem + "_files")
    report = build_report(root, image_dir, **kwargs)
    text = render_markdown(report, image_dir)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(md_path, text)
    atomic_write_text(html_path, render_html(text, md_path.parent).replace("<!DOCTYPE html>", "<!DOCTYPE html>\n" + MARKER, 1))
    return md_path, html_path, report


__all__ = [
    "CHAT_KINDS",
    "MARKER",
    "Report",
    "Sample",
    "StageRun",
    "build_report",
    "chat_samples",
    "default_prompts",
    "final_metrics",
    "find_stages",
    "load_stage",
    "plot_stage",
    "read_metrics",
    "render_html",
    "render_markdown",
    "sample_replies",
    "throughput",
    "write_report",
]
