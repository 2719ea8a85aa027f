"""Checkpoint writes leave the training thread (issue #13 item 11): the state is copied at the step
boundary, so what later steps do can never change what an earlier save writes."""

from __future__ import annotations

import threading

import numpy as np
import torch

import aprtool.train.checkpoint as checkpoint
from aprtool import open_apr
from aprtool.model.llama import PRESETS, LlamaForCausalLM
from aprtool.train.checkpoint import CheckpointDir
from aprtool.train.common import param_groups


def test_a_step_taken_while_a_save_is_in_flight_does_not_change_what_it_writes(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = LlamaForCausalLM(PRESETS["tiny"].with_overrides(vocab_size=64))
    groups, names = param_groups(model, 0.1)
    opt = torch.optim.AdamW(groups, lr=1e-2)

    def step() -> None:
        model(torch.randint(0, 64, (2, 8))).float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    at_save = {n: t.detach().clone() for n, t in model.weights().items()}
    params = [p for g in groups for p in g["params"]]
    moments = {n: opt.state[p]["exp_avg"].clone() for n, p in zip(names, params, strict=True)}

    gate, started = threading.Event(), threading.Event()
    real_write = checkpoint.write_apr

    def gated_write(*args, **kwargs):  # the worker holds the write until the training thread has moved on
        started.set()
        gate.wait(timeout=30)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "write_apr", gated_write)
    ckpts = CheckpointDir(tmp_path, keep_last=5, log=print)
    ckpts.save(ckpts.step_path(1), model.weights(), opt, names, {"step": 1}, {"name": "t"})
    assert started.wait(timeout=30)  # the write is in flight, on the worker
    for _ in range(3):  # training goes on: weights and moments change in place
        step()
    assert any(not torch.equal(at_save[n], t) for n, t in model.weights().items())
    gate.set()
    ckpts.finish()

    assert ckpts.latest() == ckpts.step_path(1)  # written, verified, pointed at
    with open_apr(ckpts.step_path(1)) as f:
        for name, value in at_save.items():
            assert np.array_equal(f.numpy(name), value.numpy()), name
        for name, value in moments.items():
            assert np.array_equal(f.numpy(f"__training__.optim.{name}.exp_avg"), value.numpy()), name
