"""Data-parallel training: two CPU processes under torchrun (gloo) end with identical weights."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

WORKER = textwrap.dedent('''
    import sys
    from pathlib import Path

    import torch

    from circuits import tiny_model
    from transcoders import TrainConfig, train
    from transcoders.distributed import context, init_from_env

    out = Path(sys.argv[1])
    init_from_env()  # torchrun's environment -> a gloo group on CPU
    ctx = context()
    torch.set_num_threads(1)
    model = tiny_model("llama", n_layers=2, d_model=16, d_mlp=32, d_vocab=64, n_ctx=32, init_scale=4.0)

    def rows():
        g = torch.Generator().manual_seed(0)
        while True:
            yield torch.randint(1, 64, (4, 12), generator=g)

    seen, losses = [], []
    cfg = TrainConfig(kind=sys.argv[2], d_features=32, activation=sys.argv[3], k=4, l0=4.0 if sys.argv[3] == "jumprelu" else None,
                      n_tokens=2 * 44 * 8, seq_len=12, model_batch=4, chunk_batches=2, batch_tokens=44, lr=1e-2,
                      warmup_steps=2, checkpoint_every=4, precision="fp32")
    tc = train(model, cfg, run_dir=out / "run", save_dir=out / "set", token_batches=rows, progress=False,
               callback=lambda step, s: (seen.append(step), losses.append(float(s.loss))))
    torch.save({"state": tc.state_dict(), "world": ctx.world, "steps": seen, "losses": losses},
               out / f"rank{ctx.rank}.pt")
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind, activation", [("plt", "jumprelu"), ("clt", "topk")])
def test_two_ranks_keep_identical_weights(tmp_path: Path, kind: str, activation: str) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), str(script), str(tmp_path), kind, activation]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert r0["world"] == r1["world"] == 2
    assert r0["steps"] == r1["steps"] == list(range(1, 9))  # 2 ranks x 44 pairs per step: 8 steps
    assert r0["losses"] != r1["losses"], "each rank should train on its own share of the data"
    for name, a in r0["state"].items():
        assert torch.equal(a, r1["state"][name]), f"{name} differs between the ranks"
    assert (tmp_path / "run" / "checkpoint.pt").is_file() and (tmp_path / "set" / "config.yaml").is_file()
