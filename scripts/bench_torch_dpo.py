#!/usr/bin/env python3
"""PyTorch + PEFT counterpart of `hdpo bench train` (BENCHMARKS.md).

One DPO optimiser step on a Mistral-style decoder (RMSNorm, RoPE in
rotate_half form, grouped-query attention with eager softmax, SwiGLU, untied
LM head) with LoRA on q_proj and v_proj: the policy's forward and backward on
one pair (chosen + rejected, `seq_len` random tokens each, the second half
scored as the response), the sigmoid DPO loss against reference log-probs
computed once beforehand, and an AdamW step -- the same work as
`hdpo::model::bench::dpo_train_throughput`.

Usage (CPU):
  python scripts/bench_torch_dpo.py --shape fixture --iters 20
  python scripts/bench_torch_dpo.py --shape h256 --iters 5
Prints one JSON line.
"""

import argparse
import json
import math
import os
import platform
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

SHAPES = {
    # fixtures/models/tiny_llava's decoder
    "fixture": dict(vocab=1000, hidden=64, inter=128, layers=2, heads=4, kv=2, head_dim=16),
    # issue 6's benchmark decoder (hdpo::model::bench::h256_config)
    "h256": dict(vocab=32000, hidden=256, inter=1024, layers=4, heads=4, kv=4, head_dim=64),
}


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), -1)


class Attention(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.h, self.kv, self.d = s["heads"], s["kv"], s["head_dim"]
        H = s["hidden"]
        self.q_proj = nn.Linear(H, self.h * self.d, bias=False)
        self.k_proj = nn.Linear(H, self.kv * self.d, bias=False)
        self.v_proj = nn.Linear(H, self.kv * self.d, bias=False)
        self.o_proj = nn.Linear(self.h * self.d, H, bias=False)

    def forward(self, x, cos, sin, mask):
        b, l, _ = x.shape
        q = self.q_proj(x).view(b, l, self.h, self.d).transpose(1, 2)
        k = self.k_proj(x).view(b, l, self.kv, self.d).transpose(1, 2)
        v = self.v_proj(x).view(b, l, self.kv, self.d).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = self.h // self.kv
        k = k.repeat_interleave(rep, 1)
        v = v.repeat_interleave(rep, 1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(self.d) + mask
        att = att.softmax(-1)
        return self.o_proj((att @ v).transpose(1, 2).reshape(b, l, -1))


class Layer(nn.Module):
    def __init__(self, s):
        super().__init__()
        H, I = s["hidden"], s["inter"]
        self.self_attn = Attention(s)
        self.gate_proj = nn.Linear(H, I, bias=False)
        self.up_proj = nn.Linear(H, I, bias=False)
        self.down_proj = nn.Linear(I, H, bias=False)
        self.input_layernorm = RMSNorm(H)
        self.post_attention_layernorm = RMSNorm(H)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Decoder(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.s = s
        self.embed_tokens = nn.Embedding(s["vocab"], s["hidden"])
        self.layers = nn.ModuleList([Layer(s) for _ in range(s["layers"])])
        self.norm = RMSNorm(s["hidden"])
        self.lm_head = nn.Linear(s["hidden"], s["vocab"], bias=False)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, ids):
        b, l = ids.shape
        d = self.s["head_dim"]
        inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2).float() / d))
        f = torch.outer(torch.arange(l).float(), inv)
        emb = torch.cat((f, f), -1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        mask = torch.full((l, l), float("-inf")).triu(1)[None, None]
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.lm_head(self.norm(x))


def seq_logps(logits, ids, resp):
    lp = torch.log_softmax(logits[:, :-1].float(), -1)
    tok = lp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (tok * resp[:, 1:]).sum(-1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), default="fixture")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    s = SHAPES[a.shape]
    model = Decoder(s)
    peft_used = True
    try:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(r=a.lora_r, lora_alpha=2 * a.lora_r, lora_dropout=0.0,
                       target_modules=["q_proj", "v_proj"]),
        )
    except ImportError:  # pragma: no cover - reported in the output
        peft_used = False
        raise
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    L = a.seq_len
    ids = torch.randint(5, s["vocab"], (2, L))
    resp = (torch.arange(L) >= L // 2).float()[None].expand(2, L)
    with torch.no_grad(), model.disable_adapter():
        ref = seq_logps(model(ids), ids, resp)
    beta = 0.1

    def step():
        pol = seq_logps(model(ids), ids, resp)
        h = (pol[0] - ref[0]) - (pol[1] - ref[1])
        loss = -F.logsigmoid(beta * h)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    c0 = time.process_time()
    t0 = time.perf_counter()
    for _ in range(a.iters):
        step()
    sec = (time.perf_counter() - t0) / a.iters
    cpu = (time.process_time() - c0) / a.iters
    print(json.dumps({
        "impl": "pytorch+peft" if peft_used else "pytorch",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "shape": a.shape, **s, "seq_len": L, "pairs_per_step": 1,
        "trainable_params": sum(p.numel() for p in params),
        "seconds_per_step": sec, "pairs_per_s": 1 / sec, "tokens_per_s": 2 * L / sec,
        "cpu_seconds_per_step": cpu,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
    }))


if __name__ == "__main__":
    main()
