"""DDP under `torchrun` (gloo on CPU): two ranks train the same model as one process would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

WORKER = r"""
import json, sys, torch
from minigpt.model import MiniGPTConfig, MiniGPTForCausalLM
from minigpt.model.encoder import MiniGPTForMaskedLM
from minigpt.objectives.lm import CausalLMObjective
from minigpt.objectives.mlm import MLMObjective
from minigpt.data.mlm import MaskedBlocks
from minigpt.train.config import TrainConfig
from minigpt.train.loop import Trainer
import torch.distributed as dist

class Blocks:
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.t = torch.randint(0, 40, (32 * 8 + 1,), generator=g)
    def __len__(self):
        return 32
    def __getitem__(self, i):
        return {"input_ids": self.t[i * 8:(i + 1) * 8], "targets": self.t[i * 8 + 1:(i + 1) * 8 + 1]}

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
@pytest.mark.parametrize("objective", ["lm", "mlm"])
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
