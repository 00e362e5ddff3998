"""DDP and FSDP2 under `torchrun` (gloo on CPU): two ranks train the same model as one process would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

# The data both workers train on: n blocks of 8 tokens (targets shifted by one) cut from one
# seeded stream of 257 ids < 40.
BLOCKS = r"""
import torch

class Blocks:
    def __init__(self, n=32):
        g = torch.Generator().manual_seed(0)
        self.n = n
        self.t = torch.randint(0, 40, (32 * 8 + 1,), generator=g)
    def __len__(self):
        return self.n
    def __getitem__(self, i):
        return {"input_ids": self.t[i * 8:(i + 1) * 8], "targets": self.t[i * 8 + 1:(i + 1) * 8 + 1]}
"""

WORKER = BLOCKS + r"""
import json, sys, torch
from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM
from minigpt.model.encoder import MiniGPTForMaskedLM
from minigpt.objectives.lm import CausalLMObjective
from minigpt.objectives.mlm import MLMObjective
from minigpt.data.mlm import MaskedBlocks
from minigpt.train.config import TrainConfig
from minigpt.train.loop import Trainer
import torch.distributed as dist


mlm = sys.argv[3] == "mlm"
torch.manual_seed(0)
model = (MiniGPTForMaskedLM if mlm else MiniGPTForCausalLM)(MiniGPTConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2))
cfg = TrainConfig(max_steps=3, batch_size=int(sys.argv[2]), lr=1e-2, warmup_steps=1, precision="fp32", device="cpu",
                  eval_interval=0, save_interval=0, progress=False, tensorboard=False)
data = MaskedBlocks(Blocks(), 8, 40, 0.3, [0, 1, 8], seed=0) if mlm else Blocks()
t = Trainer(model, MLMObjective() if mlm else CausalLMObjective(), data, cfg, sys.argv[1])
t.fit()
if t.rank == 0:
    json.dump({"world": t.world_size, "losses": [h["loss"] for h in t.history],
               "weights": [p.detach().flatten()[:8].tolist() for p in model.parameters()]}, open(sys.argv[1] + "/result.json", "w"))
if dist.is_initialized():
    dist.destroy_process_group()
"""


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
# The masked-LM variant (its unit, masked tokens, differs per rank) is marked slow: the suite
# must stay under 10 minutes on 2 cores; `pytest -m slow` runs it.
@pytest.mark.parametrize("objective", ["lm", pytest.param("mlm", marks=pytest.mark.slow)])
def test_ddp_two_ranks_match_one_process(tmp_path, objective):
    """Rank r takes every 2nd index of the same permutation, so 2 ranks x batch 2 cover the
    same 4 sequences per step as 1 process x batch 4 (in another order inside the step, which
    the mean does not see): losses and weights agree. For masked-LM the unit (masked tokens)
    differs from rank to rank and is all-reduced, so the mean is still the global one."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = tmp_path / "single"
    single.mkdir()
    subprocess.run([sys.executable, str(script), str(single), "4", objective], check=True, env=env, timeout=300)
    ddp = tmp_path / "ddp"
    ddp.mkdir()
    proc = subprocess.run(
        ["torchrun", "--standalone", "--nproc_per_node", "2", str(script), str(ddp), "2", objective],
        env=env, timeout=300, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = json.loads((single / "result.json").read_text())
    b = json.loads((ddp / "result.json").read_text())
    assert a["world"] == 1 and b["world"] == 2
    assert b["losses"] == pytest.approx(a["losses"], rel=1e-5)
    for wa, wb in zip(a["weights"], b["weights"]):
        assert wb == pytest.approx(wa, rel=1e-4, abs=1e-6)


FSDP_WORKER = BLOCKS + r"""
import json, sys, torch
from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM
from minigpt.objectives.lm import CausalLMObjective
from minigpt.train.config import TrainConfig
from minigpt.train.loop import Trainer
import torch.distributed as dist


out, batch, steps, resume = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "resume"
torch.manual_seed(0)
model = MiniGPTForCausalLM(MiniGPTConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
cfg = TrainConfig(max_steps=steps, batch_size=batch, lr=1e-2, warmup_steps=1, min_lr_ratio=1.0, precision="fp32", device="cpu",
                  eval_interval=2, eval_batches=0, save_interval=2, progress=False, tensorboard=False, fsdp=True, grad_accum=2)
t = Trainer(model, CausalLMObjective(), Blocks(), cfg, out, val_dataset=Blocks(30))  # 15 batches of 2: one rank runs a padding batch
t.fit(resume=resume)
if t.rank == 0:
    json.dump({"world": t.world_size, "fsdp": t.fsdp, "losses": [h["loss"] for h in t.history], "val": t.last_eval["val_loss"]},
              open(out + "/result.json", "w"))
if dist.is_initialized():
    dist.destroy_process_group()
"""


@pytest.mark.slow  # 30-35 s on 2 cores: two ranks, a resume and a one-process reference (pytest -m slow)
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_fsdp_two_ranks_match_one_process_and_sharded_checkpoints_resume(tmp_path):
    """FSDP2 (fully_shard per layer, gloo on CPU): 2 ranks × batch 2 × 2 micro-batches give the
    losses, validation loss and final weights of 1 process × batch 4 × 2; a run stopped at a
    sharded checkpoint and resumed gives the uninterrupted losses; the sharded checkpoint
    consolidates, in one process, into the weights the run saved."""
    import torch
    from safetensors.torch import load_file

    import minigpt  # noqa: F401
    from minigpt.train.fsdp import consolidate

    script = tmp_path / "worker.py"
    script.write_text(FSDP_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def launch(out, ranks, batch, steps, mode="fresh"):
        out.mkdir(exist_ok=True)
        cmd = ([sys.executable] if ranks == 1 else ["torchrun", "--standalone", "--nproc_per_node", str(ranks)])
        proc = subprocess.run(cmd + [str(script), str(out), str(batch), str(steps), mode], env=env, timeout=300,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((out / "result.json").read_text())

    single = launch(tmp_path / "single", 1, 4, 4)
    fsdp = launch(tmp_path / "fsdp", 2, 2, 4)
    assert single["world"] == 1 and fsdp["world"] == 2 and fsdp["fsdp"]
    assert fsdp["losses"] == pytest.approx(single["losses"], rel=1e-5)
    assert fsdp["val"] == pytest.approx(single["val"], rel=1e-5)
    a, b = load_file(tmp_path / "single" / "model.safetensors"), load_file(tmp_path / "fsdp" / "model.safetensors")
    assert set(a) == set(b)
    for k in a:  # AdamW divides by sqrt(v): near-zero gradients summed in another order move by ~1e-4
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=5e-4)
    ckpt = tmp_path / "fsdp" / "checkpoints" / "step_00000004"
    assert (ckpt / "sharded").is_dir() and len(list((ckpt / "sharded").glob("*.distcp"))) == 2
    consolidate(ckpt, tmp_path / "consolidated")
    c = load_file(tmp_path / "consolidated" / "model.safetensors")
    for k in b:
        torch.testing.assert_close(c[k], b[k])
    # As if interrupted after step 2: the run's directory with only its step-2 sharded checkpoint
    # (written mid-run); resumed to step 4, it gives the uninterrupted run's losses.
    shutil.copytree(tmp_path / "fsdp", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step_00000004")
    (tmp_path / "resumed" / "checkpoints" / "latest").unlink()
    (tmp_path / "resumed" / "result.json").unlink()
    assert (tmp_path / "resumed" / "checkpoints" / "step_00000002" / "sharded").is_dir()
    resumed = launch(tmp_path / "resumed", 2, 2, 4, "resume")
    assert resumed["losses"] == pytest.approx(fsdp["losses"][2:], rel=1e-5)
