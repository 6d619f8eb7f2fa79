"""vLLM's and SGLang's mixture-of-experts launch flags, as rows of their engines' tables
(aiollm/vllm_flags.py, aiollm/cli/sglang_flags.py splice them in), so that a MoE launch
line of their recipes starts aiollm or stops at once saying why.

aiollm serves MoE models on one GPU or tensor parallel: every rank holds its share of
every expert's features, as vLLM and SGLang split experts without expert parallelism. So:

- flags that choose a kernel, record or report which experts tokens went to, or set
  what only expert parallelism uses (its all-to-all backend, expert placement, load
  balancing's settings, the thresholds of vLLM's dual batch overlap) change no output:
  taken, each logged as having no effect; their values checked as their engine checks
  them (a type, its choices where its list is short and stable, --moe-dense-tp-size
  against --tensor-parallel-size), but for a value that changes outputs, refused
  (--ep-dispatch-algorithm fake: experts drawn at random);
- flags asking for expert parallelism or what needs it (redundant experts, expert load
  balancing, elastic expert parallelism, the microbatch overlaps of its all-to-all
  exchanges, vLLM's routed experts in outputs) stop the start naming the flag and why;
  a value asking for aiollm's own behaviour (--ep-size 1, --num-redundant-experts 0) is
  taken.

Flags read from vLLM's EngineArgs and ParallelConfig (vllm/engine/arg_utils.py,
vllm/config/parallel.py) and SGLang's ServerArgs (python/sglang/srt/server_args.py),
with their older spellings that recipes still give (vLLM's --num-redundant-experts,
--eplb-window-size... before --eplb-config; SGLang's --enable-*-moe switches).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiollm import vllm_value_checks
from aiollm.flag_kinds import Ignored, Refusal

if TYPE_CHECKING:
    from aiollm.config import EngineConfig

# where a flag is refused or does nothing, what aiollm does instead
EVERY_RANK_EVERY_EXPERT = ("every rank holds its share of every expert's features "
                           "(--tensor-parallel-size)")
_NO_EP = f"there is no expert parallelism: {EVERY_RANK_EVERY_EXPERT}"
_LEAVE_OUT = "; leave the flag out"
MOE_KERNELS = ("mixture-of-experts layers run on aiollm's Triton kernels (their PyTorch "
               "references on the CPU); outputs are the same")
_NO_BALANCING = "there is no expert parallelism, so no expert load balancing"
_REDUNDANT = (f"there is no expert parallelism, so no redundant experts: "
              f"{EVERY_RANK_EVERY_EXPERT}; leave the flag out or give 0")
_NOT_RECORDED = ("no record is kept of the experts tokens are routed to (an account "
                 "for balancing expert-parallel ranks); outputs are the same")

# --- vLLM (`vllm serve`, and LLM(...)'s keywords of the same names) ---------------------
_VLLM_ONLY_WITH_EP = ("there is no expert parallelism (vLLM uses the flag only with "
                      f"--enable-expert-parallel): {EVERY_RANK_EVERY_EXPERT}")
_NO_DBO = ("there is no dual batch overlap: vLLM splits a step into microbatches to overlap "
           "the expert-parallel all-to-all exchanges of one with the compute of the other, "
           "only with --enable-expert-parallel and a DeepEP all-to-all backend")

VLLM_REFUSED = (
    Refusal(("-ep", "--enable-expert-parallel"),
            "there is no expert parallelism: --tensor-parallel-size gives every rank its "
            "share of each expert's features (vLLM's split without this flag; the outputs "
            "are the same), leave the flag out", takes_value=False),
    Refusal(("--enable-eplb",),
            f"{_NO_BALANCING}: {EVERY_RANK_EVERY_EXPERT}, leave the flag out",
            takes_value=False),
    Refusal(("--enable-elastic-ep",),
            "there is no expert parallelism, so no elastic expert parallelism (vLLM's "
            f"scaling of expert-parallel ranks while it serves, with --enable-eplb){_LEAVE_OUT}",
            takes_value=False),
    Refusal(("--enable-dbo",), f"{_NO_DBO}; a step runs as one batch{_LEAVE_OUT}",
            takes_value=False),
    # 0 (vLLM's default) and 1 are one batch a step; more is microbatching, as --enable-dbo
    Refusal(("--ubatch-size",), f"{_NO_DBO}; a step runs as one batch{_LEAVE_OUT}",
            same=("0", "1")),
    Refusal(("--enable-return-routed-experts",),
            "outputs carry no routed experts (the experts each token's MoE layers chose)"
            f"{_LEAVE_OUT}", takes_value=False),
    # vLLM's older flag of --eplb-config's num_redundant_experts, refused as that is
    Refusal(("--num-redundant-experts",), _REDUNDANT, same=("0",)),
)

VLLM_NO_EFFECT = {
    "--no-enable-expert-parallel": "there is no expert parallelism: --tensor-parallel-size "
                                   "splits every expert's features over the ranks",
    "--no-enable-eplb": _NO_BALANCING,
    "--no-enable-elastic-ep": "there is no elastic expert parallelism",
    "--no-enable-dbo": "there is no dual batch overlap: a step runs as one batch",
    "--no-enable-return-routed-experts": "outputs carry no routed experts",
    # vLLM reads only the ranks' own experts from disk, with expert parallelism alone
    "--enable-ep-weight-filter": f"{_VLLM_ONLY_WITH_EP}, and reads them all as it loads",
    "--no-enable-ep-weight-filter": f"{_VLLM_ONLY_WITH_EP}, and reads them all as it loads",
    # vLLM's older flags of --eplb-config's log_balancedness
    "--eplb-log-balancedness": f"{_NO_BALANCING}, whose balance this logs",
    "--no-eplb-log-balancedness": f"{_NO_BALANCING}, whose balance this logs",
}

_VLLM_EPLB_SETTING = ("there is no expert parallelism load balancing (vLLM's older flag "
                      "of an --eplb-config setting, used only with --enable-eplb)")
_VLLM_DBO_SETTING = ("there is no dual batch overlap (--enable-dbo, which vLLM runs only "
                     "with expert parallelism), whose threshold this is")


def negative_refusal(value: object) -> str | None:
    """Why a count of tokens (the CLI's int text, or LLM(...)'s keyword: an int, a float with
    no fraction, a string of one) is refused: below 0, which vLLM's ParallelConfig refuses
    for its dual batch overlap's thresholds (ge=0); None: taken."""
    count = vllm_value_checks.whole_number(value)
    return None if count is None or count >= 0 else f"must be 0 or more, got {value}"


VLLM_NO_EFFECT_VALUES = (
    Ignored(("--all2all-backend",),
            f"{_VLLM_ONLY_WITH_EP}, so tokens are never exchanged all-to-all between "
            "expert ranks", "BACKEND"),
    Ignored(("--expert-placement-strategy",),
            f"{_VLLM_ONLY_WITH_EP}, so there are no experts to place on ranks",
            "STRATEGY", choices=("linear", "round_robin")),
    Ignored(("--eplb-config",),
            "there is no expert parallelism load balancing (vLLM uses the config only with "
            "--enable-eplb), which these are the settings of", "JSON",
            refuse=vllm_value_checks.eplb_refusal),
    # vLLM's kernel of the experts' matmuls (KernelConfig.moe_backend): a list that grows
    Ignored(("--moe-backend",), MOE_KERNELS, "BACKEND"),
    Ignored(("--dbo-decode-token-threshold",), _VLLM_DBO_SETTING, "N", kind=int,
            refuse=negative_refusal),
    Ignored(("--dbo-prefill-token-threshold",), _VLLM_DBO_SETTING, "N", kind=int,
            refuse=negative_refusal),
    Ignored(("--eplb-window-size",), _VLLM_EPLB_SETTING, "N", kind=int),
    Ignored(("--eplb-step-interval",), _VLLM_EPLB_SETTING, "N", kind=int),
)

# --- SGLang (`python -m sglang.launch_server`) -------------------------------------------
# (its --enable-eplb is vLLM's flag of the same spelling and meaning, refused above)
_SGLANG_EP = f"{_NO_EP}{_LEAVE_OUT}"
_SGLANG_ONLY_WITH_EP = ("there is no expert parallelism (SGLang uses the flag only with an "
                        f"--moe-a2a-backend such as deepep): {EVERY_RANK_EVERY_EXPERT}")
_SGLANG_EPLB_SETTING = ("there is no expert load balancing (SGLang runs it only with "
                        "--enable-eplb), which this is a setting of")
_NO_OVERLAP = ("there is no overlap of expert-parallel all-to-all exchanges with compute "
               "(SGLang refuses it with --moe-a2a-backend none, the one exchange aiollm "
               f"has): {EVERY_RANK_EVERY_EXPERT}{_LEAVE_OUT}")
_SHARED_FUSION = ("a shared expert runs beside the routed ones on aiollm's kernels, fused "
                  "or not as aiollm chooses; outputs are the same")
_NO_DRAFT = ("there is no speculative decoding (--speculative-algorithm is refused), so no "
             "draft model's MoE layers to run")


def dense_tp_misfit(value: str, config: EngineConfig) -> str | None:
    """SGLang's --moe-dense-tp-size N (a whole number, as typed) beside the tensor-parallel
    size of `config`: why SGLang refuses N (its check takes 1, each dense MLP layer whole on
    every rank, or its --tp-size, the layer split as aiollm splits it: the outputs are the
    same either way), or None: taken."""
    if int(value) in (1, config.tensor_parallel_size):
        return None
    return (f"SGLang takes 1 (each dense MLP layer whole on every rank) or the "
            f"tensor-parallel size (--tensor-parallel-size), {config.tensor_parallel_size}: "
            f"the layer split over the ranks, as aiollm splits it; got {value}")


def dispatch_refusal(value: str) -> str | None:
    """SGLang's --ep-dispatch-algorithm ALGORITHM: why it is refused, or None: taken. Its
    fake, a load test of expert-parallel dispatch, routes each token by random router
    logits (sglang/srt/eplb/expert_location_dispatch.py, with no expert parallelism too):
    other experts, other outputs. The others choose among an expert's redundant copies,
    of which there are none."""
    if value == "fake":
        return ("fake routes tokens to experts at random (SGLang's load test of the "
                "expert-parallel dispatch), which changes the outputs: leave the flag out, "
                "or give static")
    return None


SGLANG_REFUSED = (
    Refusal(("--ep-size", "--ep", "--expert-parallel-size"), _SGLANG_EP, same=("1",)),
    Refusal(("--enable-ep-moe",), _SGLANG_EP, takes_value=False),
    # SGLang's older spelling of --moe-a2a-backend deepep
    Refusal(("--enable-deepep-moe",), _SGLANG_EP, takes_value=False),
    # its all-to-all exchange of tokens between expert ranks: none (its default) is what
    # aiollm does; any other (deepep, mooncake...) sets SGLang's ep_size to tp_size
    Refusal(("--moe-a2a-backend",), _SGLANG_EP, same=("none",)),
    Refusal(("--ep-num-redundant-experts",), _REDUNDANT, same=("0",)),
    Refusal(("--enable-two-batch-overlap",), _NO_OVERLAP, takes_value=False),
    Refusal(("--enable-single-batch-overlap",), _NO_OVERLAP, takes_value=False),
    # the shared expert dispatched as one more routed expert to the least loaded EP rank
    Refusal(("--enable-waterfill",), _SGLANG_EP, takes_value=False),
    Refusal(("--enable-elastic-expert-backup",),
            f"there is no expert parallelism, so no elastic expert backup{_LEAVE_OUT}",
            takes_value=False),
    Refusal(("--elastic-ep-backend",),
            f"there is no expert parallelism, so no elastic expert parallelism{_LEAVE_OUT}",
            same=("none",)),
)

SGLANG_NO_EFFECT = {
    # SGLang's older spellings of --moe-runner-backend's values, which its launch lines and
    # recipes still give
    **dict.fromkeys(("--enable-flashinfer-cutlass-moe", "--enable-flashinfer-cutedsl-moe",
                     "--enable-flashinfer-trtllm-moe", "--enable-flashinfer-mxfp4-moe",
                     "--enable-triton-kernel-moe", "--enable-flashinfer-moe",
                     "--enable-fused-moe-sum-all-reduce"), MOE_KERNELS),
    # SGLang's fusion of DeepSeek V3/R1's shared expert into the routed experts' kernel
    **dict.fromkeys(("--disable-shared-experts-fusion", "--enforce-shared-experts-fusion"),
                    _SHARED_FUSION),
    "--disable-flashinfer-cutlass-moe-fp4-allgather": "quantized checkpoints are not "
                                                      "served, so no FP4 experts' inputs "
                                                      "are gathered",
    "--enable-expert-distribution-metrics": _NOT_RECORDED,
}

SGLANG_NO_EFFECT_VALUES = (
    Ignored(("--moe-runner-backend",), MOE_KERNELS, "BACKEND"),
    # SGLang's older flag of the fusion (0: none), before --disable-shared-experts-fusion
    Ignored(("--n-share-experts-fusion",), _SHARED_FUSION, "N", kind=int),
    Ignored(("--speculative-moe-runner-backend",), _NO_DRAFT, "BACKEND"),
    Ignored(("--speculative-moe-a2a-backend",), _NO_DRAFT, "BACKEND"),
    Ignored(("--flashinfer-mxfp4-moe-precision",),
            "quantized checkpoints are not served, so there are no MXFP4 experts: MoE "
            "layers compute in the model's dtype", "PRECISION"),  # bf16, fp8...: a list that grows
    Ignored(("--deepep-mode",), f"{_SGLANG_ONLY_WITH_EP}, so no DeepEP exchange to run",
            "MODE", choices=("auto", "normal", "low_latency")),
    Ignored(("--deepep-config",), f"{_SGLANG_ONLY_WITH_EP}, so no DeepEP exchange to tune",
            "JSON"),
    Ignored(("--ep-dispatch-algorithm",),
            "there are no redundant experts to choose ranks for (--ep-num-redundant-experts "
            "0)", "ALGORITHM", choices=("static", "dynamic", "fake", "lp"),
            refuse=dispatch_refusal),
    Ignored(("--init-expert-location",),
            f"there is no expert parallelism, so no experts to place on ranks: "
            f"{EVERY_RANK_EVERY_EXPERT}", "LOCATION"),
    Ignored(("--eplb-algorithm",), _SGLANG_EPLB_SETTING, "ALGORITHM"),
    Ignored(("--eplb-rebalance-num-iterations",), _SGLANG_EPLB_SETTING, "N", kind=int),
    Ignored(("--eplb-rebalance-layers-per-chunk",), _SGLANG_EPLB_SETTING, "N", kind=int),
    Ignored(("--eplb-min-rebalancing-utilization-threshold",), _SGLANG_EPLB_SETTING, "F",
            kind=float),
    Ignored(("--expert-distribution-recorder-mode",), _NOT_RECORDED, "MODE",
            choices=("stat", "stat_approx", "per_pass", "per_token")),
    Ignored(("--expert-distribution-recorder-buffer-size",), _NOT_RECORDED, "N", kind=int),
    Ignored(("--expert-balancedness-report-mode",), _NOT_RECORDED, "MODE",
            choices=("off", "server_log", "prometheus", "both")),
    Ignored(("--tbo-token-distribution-threshold",),
            "there is no two-batch overlap (--enable-two-batch-overlap), which this splits "
            "batches for", "F", kind=float),
    # SGLang's whole copy of each dense MLP layer on every rank (1, beside data-parallel
    # attention), or its --tp-size: split or whole, the layer's outputs are the same
    Ignored(("--moe-dense-tp-size",),
            "dense MLP layers are split over the ranks by --tensor-parallel-size as every "
            "layer is; outputs are the same", "N", kind=int, config_check=dense_tp_misfit),
)
