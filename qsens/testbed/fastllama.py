"""The testbed's own training model: a small pure-torch Llama equal to HF `LlamaForCausalLM` up to rounding.

Why not train the HF model itself: at 4-layer, 32-96-wide sizes a step is dominated by overhead the HF model
carries for generality (separate q/k/v and gate/up matmuls, eager RoPE/attention plumbing, masks) and by the
output head: at batch 32 x 128 the [4,096 x 2,048] logits, their log-softmax and their gradient are several
times larger than every activation of the body. Here:

- q, k, v are one [3H, H] matmul and gate, up one [2M, H] matmul;
- attention is `scaled_dot_product_attention(is_causal=True)`; RMSNorm is `F.rms_norm`; RoPE is HF's
  (rotate-half convention, base `rope_theta`, float32 tables);
- the head and the loss are one autograd function (`linear_cross_entropy`) that walks the rows in chunks and
  computes each chunk's loss and its gradients (hidden and head weight) at once, so the full logits and their
  gradient never exist.

The weights are initialised by HF (`from_hf`: the HF model is built from the seed as the HF trainer builds it,
then copied), so a seed starts from the same weights under either trainer; `to_hf` gives back a
`LlamaForCausalLM` (the stored, scored reference). Parameter layout (float32 unless moved):

    embed        [V, H]       tied: also the output head
    layers[i]    attn_norm [H], qkv [3H, H] (q rows, then k, then v), o [H, H],
                 mlp_norm [H], gate_up [2M, H] (gate rows, then up), down [H, M]
    norm         [H]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LOSS_CHUNK_ROWS = 256  # rows of the head per chunk: [256 x V] fp32 logits (2 MB at V = 2,048) stay in cache


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `hidden @ weight.T` against `targets`, gradients computed in the forward pass."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_rows: int):
        rows = hidden.shape[0]
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        scale = 1.0 / rows  # d(mean loss) / d(summed loss), applied to the small [c, H] and [V, H] products
        for start in range(0, rows, chunk_rows):
            h, t = hidden[start : start + chunk_rows], targets[start : start + chunk_rows]
            logp = torch.log_softmax(h @ weight.t(), dim=-1)  # [c, V], one fused pass over the logits
            total -= logp.gather(1, t[:, None]).sum()
            probs = logp.exp_()  # softmax, in place
            probs[torch.arange(len(t), device=t.device), t] -= 1.0  # d(summed loss) / d(logits)
            grad_hidden[start : start + chunk_rows] = (probs @ weight).mul_(scale)
            grad_weight.addmm_(probs.t(), h, alpha=scale)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total / rows

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss, grad_weight * grad_loss, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk_rows: int = LOSS_CHUNK_ROWS) -> torch.Tensor:
    """`F.cross_entropy(hidden @ weight.T, targets)` (mean) without the [T, V] logits or their gradient.

    hidden: [T, H] float; weight: [V, H] (same dtype); targets: int64 [T]. Returns a float32 scalar; its backward
    gives the exact gradients for `hidden` and `weight` (computed in the forward, scaled by the incoming grad)."""
    return _LinearCrossEntropy.apply(hidden, weight, targets, chunk_rows)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Block(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp: int, eps: float):
        super().__init__()
        self.heads, self.eps = heads, eps
        self.attn_norm = nn.Parameter(torch.ones(hidden))
        self.qkv = nn.Parameter(torch.empty(3 * hidden, hidden))
        self.o = nn.Parameter(torch.empty(hidden, hidden))
        self.mlp_norm = nn.Parameter(torch.ones(hidden))
        self.gate_up = nn.Parameter(torch.empty(2 * mlp, hidden))
        self.down = nn.Parameter(torch.empty(hidden, mlp))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: [B, S, H]; cos, sin: [S, head_dim]."""
        b, s, h = x.shape
        hd = h // self.heads
        qkv = F.linear(F.rms_norm(x, (h,), self.attn_norm, self.eps), self.qkv)
        q, k, v = qkv.view(b, s, 3, self.heads, hd).permute(2, 0, 3, 1, 4)  # each [B, heads, S, hd]
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + F.linear(attn.transpose(1, 2).reshape(b, s, h), self.o)
        gate, up = F.linear(F.rms_norm(x, (h,), self.mlp_norm, self.eps), self.gate_up).chunk(2, dim=-1)
        return x + F.linear(F.silu(gate) * up, self.down)


class FastLlama(nn.Module):
    """A Llama with tied embeddings, built from (and convertible to) an HF `LlamaConfig`."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        hidden, heads = config.hidden_size, config.num_attention_heads
        if config.num_key_value_heads != heads or not config.tie_word_embeddings:
            raise ValueError("FastLlama covers tied embeddings and full multi-head attention only")
        eps = config.rms_norm_eps
        self.embed = nn.Parameter(torch.empty(config.vocab_size, hidden))
        self.layers = nn.ModuleList(Block(hidden, heads, config.intermediate_size, eps)
                                    for _ in range(config.num_hidden_layers))
        self.norm = nn.Parameter(torch.ones(hidden))
        self.eps = eps
        head_dim = hidden // heads
        theta = config.rope_parameters["rope_theta"]
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
        freqs = torch.arange(config.max_position_embeddings, dtype=torch.float)[:, None] * inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)  # [positions, head_dim], as HF builds it
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.embed.device

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids: int64 [B, S] -> final-norm hidden states [B, S, H]."""
        s = input_ids.shape[1]
        x = F.embedding(input_ids, self.embed)
        cos, sin = self.cos[:s], self.sin[:s]
        for layer in self.layers:
            x = layer(x, cos, sin)
        return F.rms_norm(x, (x.shape[-1],), self.norm, self.eps)

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, S, V] float logits (for checks; training uses `loss`)."""
        return self.hidden_states(input_ids) @ self.embed.t()

    def loss(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy; input_ids, targets: int64 [B, S]."""
        h = self.hidden_states(input_ids)
        return linear_cross_entropy(h.reshape(-1, h.shape[-1]), self.embed, targets.reshape(-1))

    @classmethod
    def from_hf(cls, hf_model) -> "FastLlama":
        """The same weights as an HF `LlamaForCausalLM` (fused where this model fuses), on its device."""
        model = cls(hf_model.config).to(hf_model.device)
        state = hf_model.state_dict()
        with torch.no_grad():
            model.embed.copy_(state["model.embed_tokens.weight"])
            model.norm.copy_(state["model.norm.weight"])
            for i, layer in enumerate(model.layers):
                p = f"model.layers.{i}."
                layer.attn_norm.copy_(state[p + "input_layernorm.weight"])
                layer.mlp_norm.copy_(state[p + "post_attention_layernorm.weight"])
                layer.qkv.copy_(torch.cat([state[p + f"self_attn.{n}_proj.weight"] for n in "qkv"]))
                layer.o.copy_(state[p + "self_attn.o_proj.weight"])
                layer.gate_up.copy_(torch.cat([state[p + f"mlp.{n}_proj.weight"] for n in ("gate", "up")]))
                layer.down.copy_(state[p + "mlp.down_proj.weight"])
        return model

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """This model's weights under HF Llama names (q/k/v and gate/up split again), detached copies."""
        out = {"model.embed_tokens.weight": self.embed, "model.norm.weight": self.norm}
        for i, layer in enumerate(self.layers):
            p = f"model.layers.{i}."
            out[p + "input_layernorm.weight"] = layer.attn_norm
            out[p + "post_attention_layernorm.weight"] = layer.mlp_norm
            for name, part in zip("qkv", layer.qkv.chunk(3)):
                out[p + f"self_attn.{name}_proj.weight"] = part
            out[p + "self_attn.o_proj.weight"] = layer.o
            for name, part in zip(("gate", "up"), layer.gate_up.chunk(2)):
                out[p + f"mlp.{name}_proj.weight"] = part
            out[p + "mlp.down_proj.weight"] = layer.down
        return {k: v.detach().clone() for k, v in out.items()}

    def to_hf(self):
        """A CPU `LlamaForCausalLM` holding this model's weights (in their dtype); the global RNG is untouched."""
        from transformers import LlamaForCausalLM

        dtype = self.embed.dtype
        with torch.random.fork_rng(devices=[]):
            hf = LlamaForCausalLM(self.config)
        hf.load_state_dict({k: v.cpu().float() for k, v in self.hf_state_dict().items()}, strict=False)
        hf.tie_weights()
        return hf.to(dtype).eval()
