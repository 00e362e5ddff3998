"""Training throughput and peak memory: MiniGPT vs a plain loop over `transformers` Llama.

Both models have the identical configuration (the `small` preset unless told otherwise) and run
the same step (bf16 autocast forward, fp32 cross-entropy, backward, clip, fused AdamW), each in a
fresh subprocess so peak memory is measured cleanly. Prints a table with the ratio and the model
FLOPs utilisation against a bf16 matmul peak measured in the same run.

    python benchmarks/bench_train.py                 # small preset, seq 512, batch 4
    python benchmarks/bench_train.py --preset tiny --steps 5
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from _harness import matmul_peak


def worker(kind: str, preset: str, seq: int, batch: int, steps: int, precision: str, compile_: bool) -> dict:
    import torch

    from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM, count_parameters
    from minigpt.model.export import llama_config_from

    torch.manual_seed(0)
    cfg = MiniGPTConfig.from_preset(preset)
    if kind == "minigpt":
        model = MiniGPTForCausalLM(cfg)
    else:
        from transformers import LlamaForCausalLM

        lcfg = llama_config_from(cfg)
        lcfg._attn_implementation = "sdpa"
        model = LlamaForCausalLM(lcfg)
    if compile_:
        model = torch.compile(model)
    n_params = count_parameters(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randint(0, cfg.vocab_size, (batch, seq + 1))
    inputs, targets = x[:, :-1], x[:, 1:]
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else (lambda: torch.autocast("cpu", enabled=False))

    if kind == "minigpt":
        # minigpt's own training step: the objective the loop runs, with the loop's allocator setting
        from minigpt.objectives.lm import CausalLMObjective
        from minigpt.train.allocator import keep_freed_memory

        keep_freed_memory()
        objective = CausalLMObjective()
        lm_batch = {"input_ids": inputs, "targets": targets}
        units = objective.num_units(lm_batch)

        def loss_fn():
            return objective.compute_loss(model, lm_batch).loss_sum / units
    else:
        # the plain transformers way: labels shifted inside the model (one label per row less)
        labels = x[:, :-1]

        def loss_fn():
            return model(input_ids=inputs, labels=labels, use_cache=False).loss

    def step():
        with ctx():
            loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):  # warm-up (allocator, oneDNN primitives, compile)
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    times.sort()
    median = times[len(times) // 2]
    return {
        "kind": kind,
        "params": n_params,
        "step_s": median,
        "tokens_per_s": batch * seq / median,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "flops_per_token": 6 * n_params + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--worker", choices=["minigpt", "hf"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, a.preset, a.seq, a.batch, a.steps, a.precision, a.compile)))
        return
    peak_dtype = "bfloat16" if a.precision == "bf16" else "float32"  # MFU against the peak of the precision run
    peak = matmul_peak(peak_dtype)
    rows = {}
    for kind in ("hf", "minigpt"):
        cmd = [sys.executable, __file__, "--worker", kind, "--preset", a.preset, "--seq", str(a.seq), "--batch", str(a.batch), "--steps", str(a.steps), "--precision", a.precision]
        if a.compile:
            cmd.append("--compile")
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows[kind] = json.loads(out.strip().splitlines()[-1])
    hf, mg = rows["hf"], rows["minigpt"]
    print(f"preset {a.preset} ({mg['params'] / 1e6:.1f} M params), seq {a.seq}, batch {a.batch}, {a.precision}; {peak_dtype} matmul peak measured {peak / 1e12:.2f} TFLOP/s")
    print(f"{'model':<22}{'tokens/s':>10}{'step s':>9}{'MFU':>8}{'peak RSS MB':>13}")
    for name, r in (("transformers Llama", hf), ("minigpt", mg)):
        mfu = r["tokens_per_s"] * r["flops_per_token"] / peak
        print(f"{name:<22}{r['tokens_per_s']:>10.0f}{r['step_s']:>9.3f}{mfu:>8.1%}{r['peak_rss_mb']:>13.0f}")
    print(f"{'ratio minigpt/HF':<22}{mg['tokens_per_s'] / hf['tokens_per_s']:>10.2f}x{'':>16}{mg['peak_rss_mb'] / hf['peak_rss_mb']:>13.2f}x")


if __name__ == "__main__":
    main()
