"""The two distillation objectives.

Logit KD:   alpha * KL(softmax(t/T) || softmax(s/T)) * T^2 + (1 - alpha) * CE(s, labels)
            (T^2 keeps the KD gradient's scale the same across temperatures.)
Blockwise:  for each decoder layer i, with h_i the teacher's hidden state entering layer i,
            loss_i = ||student_layer_i(h_i) - teacher_layer_i(h_i)||^2 / (||teacher_layer_i(h_i)||^2 + eps)
            (normalized MSE over the micro-batch). The inputs come from the teacher under no_grad, so each
            block's gradient depends only on its own loss: the blocks train independently.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from aprtool.model.llama import LlamaForCausalLM, rope_tables

EPS = 1e-6


def logit_kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float, alpha: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, kd, ce): kd is the temperature-scaled KL per token (times T^2), ce the label cross-entropy."""
    s = student_logits.float().flatten(0, 1)
    ce = F.cross_entropy(s, labels.flatten())
    if alpha == 0:  # pure cross-entropy: the from-scratch baseline
        return ce, torch.zeros_like(ce), ce
    t = teacher_logits.float().flatten(0, 1)
    kd = F.kl_div(
        F.log_softmax(s / temperature, dim=-1),
        F.log_softmax(t / temperature, dim=-1),
        log_target=True,
        reduction="batchmean",  # the sum over tokens and vocabulary / number of tokens
    ) * (temperature * temperature)
    return alpha * kd + (1 - alpha) * ce, kd, ce


def teacher_hidden_states(teacher: LlamaForCausalLM, ids: torch.Tensor) -> list[torch.Tensor]:
    """[h_0 (embeddings), h_1, ..., h_L]: h_i enters layer i, h_{i+1} is what it returns. No gradients."""
    with torch.no_grad():
        cos, sin = rope_tables(teacher.cfg, ids.shape[1], ids.device)
        states = [teacher.model.embed_tokens(ids)]
        for layer in teacher.model.layers:
            states.append(layer(states[-1], cos, sin))
    return states


def block_losses(student: LlamaForCausalLM, states: list[torch.Tensor]) -> list[torch.Tensor]:
    """Normalized MSE of each student layer on the teacher's input to that layer, against its output."""
    cos, sin = rope_tables(student.cfg, states[0].shape[1], states[0].device)
    losses = []
    dtype = student.model.embed_tokens.weight.dtype  # a half-precision teacher's states enter in the student's
    for i, layer in enumerate(student.model.layers):
        out = layer(states[i].to(dtype), cos, sin).float()
        target = states[i + 1].float()
        losses.append((out - target).pow(2).sum() / (target.pow(2).sum() + EPS))
    return losses
