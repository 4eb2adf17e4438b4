"""Activation ranges of a DiT along real sampling chains: the data behind the fp16 policy.

Hooks record max |·| per block of the residual stream, the adaLN outputs (shift, scale, gate),
the modulated LayerNorm output that enters attention / MLP, the attention logits, the MLP hidden
activations and each branch's output, at the steps whose timestep is nearest each target, for
each guidance scale. fp16's largest finite value is 65504 and its relative spacing 2⁻¹⁰; what is
close to the former or needs more than the latter stays fp32 (see `precision.py`).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from dit_export.sampling.samplers import make_schedule
from dit_export.sampling.step import SamplerStep

FP16_MAX = 65504.0
QUANTITIES = (
    "residual_in",  # block input (the residual stream)
    "shift_msa",
    "scale_msa",
    "gate_msa",
    "shift_mlp",
    "scale_mlp",
    "gate_mlp",
    "attn_in",  # modulate(LayerNorm(x)) entering attention
    "attn_logits",  # q·kᵀ/√d before softmax
    "attn_out",
    "mlp_in",
    "mlp_hidden",  # fc1 output (GELU input)
    "mlp_out",
)


def _amax(t: torch.Tensor) -> float:
    return float(t.detach().abs().max())


@torch.no_grad()
def measure_ranges(
    model,
    *,
    targets: tuple[int, ...] = (999, 500, 0),
    scales: tuple[float, ...] = (1.5, 4.0),
    steps: int = 25,
    batch: int = 2,
    seed: int = 0,
) -> dict:
    """{"cases": [{"t", "cfg", "blocks": [{quantity: max|·|}], "final_out": …}], "max": {quantity: …}}.

    Runs the guided DDPM chain (respaced to `steps`, which keeps t = 999 and 0) from seeded
    N(0, 1) latents with random labels, per guidance scale.
    """
    cfg = model.config
    sched = make_schedule(steps, "ddpm")
    pick = {int(np.argmin(np.abs(sched.timesteps - t))): t for t in targets}
    depth = len(model.blocks)
    record: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    active = [False]

    def upd(i: int, name: str, value: float) -> None:
        if active[0]:
            record[i][name] = max(record[i][name], value)

    handles = _register_hooks(model, upd)
    step = SamplerStep(model, guided=True).eval()
    cases: list[dict] = []
    try:
        for scale in scales:
            gen = torch.Generator().manual_seed(seed)
            x = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size, generator=gen)
            y = torch.randint(0, cfg.num_classes, (batch,), generator=gen)
            g = torch.tensor([scale])
            for k in range(sched.num_steps):
                record.clear()
                active[0] = k in pick
                t = torch.full((batch,), int(sched.timesteps[k]), dtype=torch.int64)
                noise = torch.randn(x.shape, generator=gen)
                x = step(x, t, y, noise, g, torch.from_numpy(sched.coefs[k]))
                if k in pick:
                    blocks = [{q: float(record[i][q]) for q in QUANTITIES} for i in range(depth)]
                    cases.append(
                        {
                            "t": int(sched.timesteps[k]),
                            "target_t": pick[k],
                            "cfg": scale,
                            "blocks": blocks,
                            "final_in": float(record[depth]["final_in"]),
                            "final_out": float(record[depth]["final_out"]),
                        }
                    )
    finally:
        for h in handles:
            h.remove()
    overall = {q: max(b[q] for c in cases for b in c["blocks"]) for q in QUANTITIES}
    overall["final_out"] = max(c["final_out"] for c in cases)
    return {
        "steps": sched.spec,
        "targets": list(targets),
        "scales": list(scales),
        "cases": cases,
        "max": overall,
    }


def _register_hooks(model, upd) -> list:
    """Forward hooks that report each quantity of QUANTITIES (and the final layer) to `upd`."""
    depth = len(model.blocks)
    handles = []
    for i, block in enumerate(model.blocks):
        heads, hd = block.attn.h, block.attn.hd

        def pre_block(m, args, i=i):
            upd(i, "residual_in", _amax(args[0]))

        def ada(m, args, out, i=i):
            for name, part in zip(QUANTITIES[1:7], out.chunk(6, dim=1)):
                upd(i, name, _amax(part))

        def attn_in(m, args, i=i):
            upd(i, "attn_in", _amax(args[0]))

        def qkv(m, args, out, i=i, heads=heads, hd=hd, scale=block.attn.scale):
            n, t = out.shape[0], out.shape[1]
            q, k, _ = out.reshape(n, t, 3, heads, hd).permute(2, 0, 3, 1, 4)
            upd(i, "attn_logits", _amax((q * scale) @ k.transpose(-2, -1)))

        def attn_out(m, args, out, i=i):
            upd(i, "attn_out", _amax(out))

        def mlp_in(m, args, i=i):
            upd(i, "mlp_in", _amax(args[0]))

        def fc1(m, args, out, i=i):
            upd(i, "mlp_hidden", _amax(out))

        def mlp_out(m, args, out, i=i):
            upd(i, "mlp_out", _amax(out))

        handles += [
            block.register_forward_pre_hook(pre_block),
            block.adaLN_modulation.register_forward_hook(ada),
            block.attn.register_forward_pre_hook(attn_in),
            block.attn.qkv.register_forward_hook(qkv),
            block.attn.register_forward_hook(attn_out),
            block.mlp.register_forward_pre_hook(mlp_in),
            block.mlp.fc1.register_forward_hook(fc1),
            block.mlp.register_forward_hook(mlp_out),
        ]

    def final(m, args, out):
        upd(depth, "final_in", _amax(args[0]))
        upd(depth, "final_out", _amax(out))

    handles.append(model.final_layer.register_forward_hook(final))
    return handles
