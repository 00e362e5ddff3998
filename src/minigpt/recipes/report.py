"""`minigpt report RUN`: a run's report card (Markdown and HTML with the plots inline)."""

from __future__ import annotations

from typing import Any


def report(
    run: str,
    out: str | None = None,
    prompts: list[str] | None = None,
    samples: int = 3,
    max_new_tokens: int = 96,
    peak: bool = True,
) -> dict[str, Any]:
    """Write a run's report card: the machine, each stage's steps, tokens, wall time, tokens/s
    and MFU, its final figures (bits per byte, losses, accuracies, rewards, reply lengths),
    loss and reward curves, and greedy samples of each final model.

    RUN is a run directory of any command (pretrain, sft, dpo, grpo, ppo, reward, mlm,
    contrastive, distill, gym) or a folder of them (a pipeline or a quickstart: one section per
    stage, in training order). The quickstart writes its report itself.

    Args:
        run: the run directory (or folder of run directories).
        out: the Markdown page (default RUN/report.md); the HTML page is written beside it
            with the same name and the suffix .html, the plots in <name>_files/.
        prompts: prompts for the samples (default: the first prompts of each stage's
            evaluation or training data, where those files still exist).
        samples: samples per stage (0 = none: the report then loads no model).
        max_new_tokens: tokens per sample at most.
        peak: measure this machine's matmul peak (about a second) to give MFU, for runs that
            trained on this machine.

    Returns:
        {"markdown": path, "html": path, "stages": [stage names]}.

    Raises:
        UserError: RUN holds no run, a file in it is not valid JSON, or --out names a folder, a
            file that is not a minigpt report, or an unwritable place.
    """
    from minigpt.errors import UserError, check_count, check_writable
    from minigpt.evaluation.report import write_report

    check_count(samples, "--samples")
    if check_count(max_new_tokens, "--max_new_tokens") < 1:
        raise UserError(f"--max_new_tokens: must be at least 1, got {max_new_tokens}")
    if out is not None:
        from pathlib import Path

        check_writable(Path(out), "--out")
    if prompts is not None and not all(isinstance(p, str) and p.strip() for p in prompts):
        raise UserError("--prompts: every prompt must be a non-empty string")
    md, page, card = write_report(run, out, prompts=prompts, num_samples=samples, measure_peak=peak,
                                  max_new_tokens=max_new_tokens, progress=lambda line: print(line, flush=True))
    stages = [s.name for s in card.stages]
    print(f"report of {len(stages)} stage(s) ({', '.join(stages)}) -> {md} and {page}")
    return {"markdown": str(md), "html": str(page), "stages": stages}


report.cli_positional = True  # `minigpt report RUN`

__all__ = ["report"]
