"""When kernels are launched with programmatic dependent launch (aiollm/kernels/pdl.py)."""

import torch

from aiollm.kernels import pdl


def _as_on_a_hopper_gpu(monkeypatch):
    """pdl as it decides on an H100/H200 with a Triton that has launch_pdl."""
    monkeypatch.setattr(pdl, "_SUPPORTED", True)
    monkeypatch.setattr(pdl, "_ON", True)
    monkeypatch.setattr(pdl, "_capable", lambda index: True)


def test_a_hopper_gpu_launches_with_pdl(monkeypatch):
    _as_on_a_hopper_gpu(monkeypatch)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert pdl.enabled(torch.device("cuda", 0))
    assert pdl.launch_kwargs(torch.device("cuda", 0)) == {"PDL": True, "launch_pdl": True}


def test_triton_interpreter_never_launches_with_pdl(monkeypatch):
    """Under TRITON_INTERPRET=1 CUDA tensors run in Triton's interpreter, which cannot run
    gdc_wait's inline PTX ("Did you forget to add @triton.jit?"): `make test` on a machine
    with a Hopper GPU failed every decode step that way."""
    _as_on_a_hopper_gpu(monkeypatch)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not pdl.enabled(torch.device("cuda", 0))
    assert pdl.launch_kwargs(torch.device("cuda", 0)) == {"PDL": False}
