"""Across two nodes (`aiollm serve --nnodes 2` on loopback, gloo on the CPU), a rank's own
error that torch raises as a plain RuntimeError (a device error: "CUDA error: an illegal
memory access was encountered") is told as that rank's error, not taken for gloo's
"Connection closed by peer" of a failed collective, which names another node as ended.

A sitecustomize on the children's PYTHONPATH raises that error on one rank: in its load
(after the group was made) or in its first model step."""

from __future__ import annotations

import os
import urllib.error
import urllib.request

import pytest
from test_tp_start_checks import rank_folders_removed  # noqa: F401 - autouse
from test_tp_start_checks import _completion, _end, _last_error, _serving, _two_nodes
from tp_gguf import tiny_gguf  # noqa: F401 - a fixture

TIMEOUT_S = 300
DEVICE_ERROR = "CUDA error: an illegal memory access was encountered"
_SITECUSTOMIZE = '''
import os
_rank, _where = os.environ["AIOLLM_TEST_FAIL"].split(":")
ERROR = %r

def _fail_here():
    from aiollm.model import parallel
    tp = parallel.current()
    if tp is not None and tp.rank == int(_rank):
        raise RuntimeError(ERROR)

if _where == "load":
    import aiollm.model as model
    _load = model.load_model
    def load_model(*args, **kwargs):
        _fail_here()
        return _load(*args, **kwargs)
    model.load_model = load_model
else:  # (rank 0 and a node's lead in the server's process, the others spawned)
    from aiollm.engine.model_runner import ModelRunner
    _launch = ModelRunner.launch
    def launch(self, inp):
        _fail_here()
        return _launch(self, inp)
    ModelRunner.launch = launch
''' % DEVICE_ERROR


def _env(tmp_path, rank: int, where: str) -> dict:
    (tmp_path / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    return {**os.environ, "PYTHONPATH": str(tmp_path), "AIOLLM_TEST_FAIL": f"{rank}:{where}"}



def test_node_0_whose_load_failed_names_its_own_error(tiny_gguf, tmp_path):  # noqa: F811
    """Rank 0's load raises a device error after the group was made: node 0 said that
    node 1 ended ("killed? see its log"), though node 1 was fine and waiting. It now
    exits 1 with its own error; node 1 is told node 0 failed."""
    nodes, logs = _two_nodes(tiny_gguf, tmp_path, _env(tmp_path, 0, "load"))
    try:
        codes = [p.wait(timeout=TIMEOUT_S) for p in nodes]
        texts = [log.read_text() for log in logs]
        assert codes == [1, 1], texts
        error = _last_error(texts[0])
        assert DEVICE_ERROR in error and "node 1" not in error, error
        assert "ended during start-up" not in texts[0], texts[0]
        assert DEVICE_ERROR in _last_error(texts[1]), texts[1]
    finally:
        _end(nodes)


@pytest.mark.parametrize("tp", [2, 4])
def test_node_1_whose_step_failed_names_its_own_error(tiny_gguf, tmp_path, tp):  # noqa: F811
    """Node 1's first rank fails a model step with a device error while it serves: it
    said a rank of another node ended. It now exits 1 with its own error; node 0 names
    node 1 as ended (with -tp 4, not its own rank 1, which failed on node 1's sockets)."""
    nodes, logs = _two_nodes(tiny_gguf, tmp_path, _env(tmp_path, tp // 2, "step"), tp=tp)
    try:
        base = _serving(nodes, logs)
        request = _completion(base)
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(request, timeout=60)
        assert nodes[1].wait(timeout=30) == 1, logs[1].read_text()
        text = logs[1].read_text()
        assert DEVICE_ERROR in text, text
        assert "of another node ended" not in text, text
        assert nodes[0].wait(timeout=30) == 1, logs[0].read_text()
        ranks = "rank 1" if tp == 2 else "ranks 2-3"
        error = _last_error(logs[0].read_text())
        assert f"tensor parallel node 1 ({ranks}) ended while this node served" in error, error
    finally:
        _end(nodes)


# NCCL's errors as torch raises them (DistBackendError, "NCCL error in: FILE:LINE, " and
# ncclGetErrorString's words, then torch's detail of the result code)
NCCL_OWN = ("NCCL error in: NCCLUtils.hpp:317, unhandled cuda error (run with NCCL_DEBUG=INFO "
            "for details), NCCL version 2.21.5\nncclUnhandledCudaError: Call to CUDA function "
            "failed.\nLast error:\nCuda failure 'out of memory'")
NCCL_REMOTE = ("NCCL error in: NCCLUtils.hpp:317, remote process exited or there was a network "
               "error, NCCL version 2.21.5\nncclRemoteError: A call failed possibly due to a "
               "network error or a remote process exiting prematurely.")


def test_a_ranks_own_nccl_error_is_not_taken_for_a_peer_that_ended():
    """On GPUs NCCL raises every error as DistBackendError, a rank's own device error too
    ("unhandled cuda error": its GPU out of memory, an illegal access): it was taken for a
    peer that ended, so node 0 named node 1 as ended (killed?) and a rank of this node that
    failed so was taken for collateral. Only NCCL's remote error and gloo's words are a
    peer's now; the store's errors still are."""
    import torch.distributed as dist

    from aiollm.distributed.peer_lost import peer_ended, peer_ended_error

    assert not peer_ended("DistBackendError", NCCL_OWN)
    assert not peer_ended_error(dist.DistBackendError(NCCL_OWN))
    assert peer_ended("DistBackendError", NCCL_REMOTE)
    assert peer_ended_error(dist.DistBackendError(NCCL_REMOTE))
    assert peer_ended_error(dist.DistBackendError("Connection closed by peer [127.0.0.1]:1"))
    assert peer_ended_error(dist.DistNetworkError("failed to recv, got 0 bytes"))
    assert peer_ended("DistStoreError", "Socket Timeout")
    assert not peer_ended_error(RuntimeError("CUDA error: an illegal memory access"))
    assert peer_ended_error(RuntimeError("[gloo] Connection closed by peer [10.0.0.2]:5"))
