"""WeightFiller: copies checkpoint tensors, named as in transformers, into our fused parameters.

Both loaders (safetensors directories and GGUF files) translate their tensors to transformers'
names; this is the one place that knows how those names land in llama.py's modules: q/k/v
become row ranges of qkv_proj, gate/up row ranges of gate_up_proj, everything else maps one to
one (Gemma's norm weights w become 1 + w). The copy casts to the run dtype (a Gemma norm's to
float32) and moves to the model's device in one step, and the filler checks that every
parameter was written exactly once: a tensor given twice is refused when it comes, the tensors
never given are named at the end in the checkpoint's terms (which of q/k/v, which expert, or
which stacked tensor of all experts when the checkpoint stacks them). A loader whose files use
other names (GGUF's) passes their mapping from transformers' names, and every message names
the file's tensor. Under tensor parallelism (aiollm.model.parallel) it copies only the rank's
part of each tensor: its rows of q/k/v, gate/up (of the MLP and of every expert), the
embedding and lm_head, its columns of o_proj and down_proj; the router and the shared expert's
gate whole. GraniteMoe's router (router.layer) and its experts, stacked and gate/up fused
already (input_linear, output_linear), land in our router and stacked experts; Granite's
residual and logit scales are multiplied into the tensors they fold into as those are copied
(granite_scales.py). What the errors say of a checkpoint that does not fit the config (which
field to check, by the checkpoint's names) is weights_errors.py's.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from aiollm.model.granite_scales import scaled
from aiollm.model.llama import LlamaForCausalLM
from aiollm.model.parallel import ShardPlan
from aiollm.model.weights_errors import CheckpointErrors

# dtypes of weights read as they are (an integer or float8 tensor is a quantized weight)
_WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# Tensors some checkpoints carry that we recompute (old Llama checkpoints saved the rotary
# inverse frequencies as buffers).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
# One expert's projection: Qwen names (gate/up/down_proj), Mixtral's (w1/w3/w2).
_EXPERT = re.compile(r"layers\.(\d+)\.(?:mlp|block_sparse_moe)\.experts\.(\d+)\.(\w+)\.weight$")
# All experts of a layer in one [E, out, in] tensor per projection (GGUF's *_exps).
_STACKED = re.compile(
    r"layers\.(\d+)\.mlp\.experts\.(gate_proj|up_proj|down_proj)(?:\.weight)?$")
_EXPERT_PROJ = {"gate_proj": 0, "w1": 0, "up_proj": 1, "w3": 1, "down_proj": None, "w2": None}
# GraniteMoe's names of the router and the stacked experts -> ours
_GRANITE_MOE_NAMES = {"router.layer.weight": "gate.weight", "router.weight": "gate.weight",
                      "input_linear.weight": "experts.gate_up_proj",
                      "output_linear.weight": "experts.down_proj"}
_GRANITE_MOE = re.compile(r"(?<=\.mlp\.)(router\.layer\.weight|router\.weight|"
                          r"input_linear\.weight|output_linear\.weight)$")
_GRANITE_MOE_SOURCE = {"gate.weight": "router.layer.weight",
                       "experts.gate_up_proj": "input_linear.weight",
                       "experts.down_proj": "output_linear.weight"}
# Qwen2-MoE's shared expert and its gate.
_SHARED_EXPERT = re.compile(r"layers\.\d+\.mlp\.shared_expert(?:_gate)?\.")


class WeightFiller:
    def __init__(self, model: LlamaForCausalLM,
                 source_name: Callable[[str], str] | None = None, *, gguf: bool = False):
        """source_name: transformers' name of a tensor -> the checkpoint's own name of it,
        for messages (None: the checkpoint uses transformers' names). gguf: the checkpoint
        is a GGUF file, whose metadata is its config (messages name no config.json)."""
        cfg = model.config
        self.gguf = gguf
        self.params = dict(model.named_parameters())
        self.tied = cfg.tie_word_embeddings
        # Gemma's norms: 1 + w from a checkpoint's w (llama.cpp's files hold 1 + w already),
        # in float32 from w in the run dtype, as transformers computes it in its forward
        self.norm_offset = cfg.rms_norm_unit_offset and not gguf
        self.run_dtype = model.embed_tokens.weight.dtype
        tp = model.embed_tokens.tp
        self.sharded = tp is not None
        if tp is None:
            plan = ShardPlan((0, cfg.num_heads), (0, cfg.num_kv_heads),
                             (0, cfg.intermediate_size), (0, cfg.vocab_size), cfg.vocab_size)
        else:
            plan = ShardPlan.of(cfg, tp.rank, tp.size)
        d = cfg.head_dim
        q = (plan.q_heads[0] * d, plan.q_heads[1] * d)  # (first row, rows) in the checkpoint
        kv = (plan.kv_heads[0] * d, plan.kv_heads[1] * d)
        i = plan.intermediate
        # checkpoint module name -> (our module name, first row in ours, the tensor's rows)
        self.shards = {
            "q_proj": ("qkv_proj", 0, q),
            "k_proj": ("qkv_proj", q[1], kv),
            "v_proj": ("qkv_proj", q[1] + kv[1], kv),
            "gate_proj": ("gate_up_proj", 0, i),  # rows: half of the parameter's, see fill
            "up_proj": ("gate_up_proj", i[1], i),
        }
        self.columns = {"o_proj": q, "down_proj": i}  # row-parallel: the rank's input features
        self.vocab = plan.vocab
        # the rank's intermediate features of each routed expert and of the shared expert
        self.expert_features, self.shared_features = plan.expert_intermediate, \
            plan.shared_intermediate
        # the whole checkpoint tensor's size along the dimension the ranks split, by module
        self.split_sizes = {"q_proj": cfg.q_size, "k_proj": cfg.kv_size, "v_proj": cfg.kv_size,
                            "o_proj": cfg.q_size, "gate_proj": cfg.intermediate_size,
                            "up_proj": cfg.intermediate_size,
                            "down_proj": cfg.intermediate_size}
        self.vocab_size = cfg.vocab_size
        self.expert_size = cfg.moe.intermediate_size if cfg.moe is not None else 0
        self.shared_size = cfg.moe.shared_expert_intermediate_size if cfg.moe is not None else 0
        self.filled: dict[str, int] = {}  # elements written per parameter
        # where each copy into a parameter began (its storage offset): a second copy to the
        # same place is a repeated tensor, and the places never written name what is missing
        self.starts: dict[str, set[int]] = {}
        self.architecture = cfg.architecture
        self.config = cfg
        self.num_experts = cfg.moe.num_experts if cfg.moe is not None else 0
        self.mixtral_names = False  # the checkpoint names experts w1/w3/w2 (for messages)
        # how the checkpoint lays out experts (for messages): one tensor per expert and
        # projection ("per-expert"), or all experts in one per projection, gate and up apart
        # (GGUF's *_exps: "stacked") or together (transformers 5's state dict: "fused")
        self.expert_layout = "per-expert"
        # experts each sparse layer holds: (first global expert id, count)
        self.expert_ranges = {
            str(n): layer.mlp.expert_range for n, layer in enumerate(model.layers)
            if hasattr(layer.mlp, "expert_range")
        }
        layer_kinds = ["experts" if str(n) in self.expert_ranges else "a dense MLP"
                       for n in range(len(model.layers))]
        self.errors = CheckpointErrors(source_name, gguf, cfg.moe, cfg.architecture,
                                       self.num_experts, layer_kinds)
        # transformers builds shared_expert_intermediate_size=0 as a zero-width shared expert
        # (and saves its empty projections and its gate), which adds sigmoid(gate) * 0: ours
        # has none, and those tensors are skipped
        self.no_shared_expert = cfg.moe is not None and not cfg.moe.shared_expert_intermediate_size

    def fill(self, hf_name: str, tensor: torch.Tensor) -> None:
        name = hf_name.removeprefix("model.")
        if name.endswith(_IGNORED_SUFFIXES) or (self.tied and name == "lm_head.weight"):
            return
        if ".block_sparse_moe." in name:  # Mixtral's (and GraniteMoe's) name of the MoE block
            name = name.replace(".block_sparse_moe.", ".mlp.")
            self.mixtral_names = True
            # GraniteMoe's router and its experts, all in one [E, out, in] tensor per
            # projection (gate above up in input_linear, as in our gate_up_proj), under
            # their checkpoint names and transformers 5's
            name = _GRANITE_MOE.sub(lambda m: _GRANITE_MOE_NAMES[m[1]], name)
        if self.no_shared_expert and _SHARED_EXPERT.search(name):
            if self.architecture != "qwen2_moe" and tensor.numel():
                # no config field gives Mixtral or Qwen3-MoE a shared expert: naming
                # shared_expert_intermediate_size sent users to a field these never read
                raise ValueError(
                    f"checkpoint tensor {self.errors.src(hf_name)!r} has no place in the model: "
                    f"{self.architecture} models have no shared expert (of the supported "
                    "model types only qwen2_moe has one): check " + (
                        "the file's general.architecture" if self.gguf
                        else "config.json's model_type"))
            if ".shared_expert." in name and tensor.numel():
                raise ValueError(
                    f"checkpoint tensor {self.errors.src(hf_name)!r} has shape "
                    f"{tuple(tensor.shape)}, but the config's shared_expert_intermediate_size "
                    "is 0 (no shared expert)")
            return
        if (m := _EXPERT.search(name) or _STACKED.search(name)) is not None:
            return self._fill_experts(hf_name, m, tensor)
        if self.norm_offset and name.endswith("norm.weight") and tensor.dtype in _WEIGHT_DTYPES:
            tensor = tensor.to(self.run_dtype).float() + 1
        parts = name.split(".")
        module = parts[-2] if len(parts) >= 2 else ""
        shard = self.shards.get(module)
        if shard is not None:
            parts[-2] = shard[0]
            name = ".".join(parts)
        param = self.params.get(name)
        if param is None:
            raise self.errors.no_place(hf_name, name)
        if ".experts." in name:  # a parameter of ours in the checkpoint: all experts at once
            self.expert_layout = "fused"
        if shard is None:
            dst = param.data
        elif shard[0] == "gate_up_proj":  # the MLP's, or a shared expert's of its own width
            half = param.shape[0] // 2
            dst = param.data.narrow(0, half * (module == "up_proj"), half)
        else:
            dst = param.data.narrow(0, shard[1], shard[2][1])
        if self.sharded:  # this rank's part of the tensor
            # a shared expert's gate/up rows and down columns are of its own width
            shared = ".shared_expert." in name
            features = self.shared_features if shared else None
            size = self.shared_size if shared else self.split_sizes.get(module)
            if shard is not None:
                tensor = self._part(hf_name, tensor, dst, 0, features or shard[2], size)
            elif module in self.columns and parts[-1] == "weight":
                tensor = self._part(hf_name, tensor, dst, 1, features or self.columns[module],
                                    size)
            elif name.endswith(".experts.gate_up_proj"):  # all experts, gate and up fused
                self._part(hf_name, tensor, dst, -2, None, 2 * self.expert_size)
                gate, up = tensor.chunk(2, dim=-2)
                half = dst.shape[-2] // 2
                self._copy(hf_name, name, dst.narrow(-2, 0, half),
                           gate.narrow(-2, *self.expert_features))
                dst, tensor = dst.narrow(-2, half, half), up.narrow(-2, *self.expert_features)
            elif name in ("embed_tokens.weight", "lm_head.weight"):
                n = self.vocab[1]
                dst[n:].zero_()  # the padding rows past the vocabulary, on the last rank
                self.filled[name] = self.filled.get(name, 0) + dst[n:].numel()
                dst = dst[:n]
                tensor = self._part(hf_name, tensor, dst, 0, self.vocab, self.vocab_size)
        self._copy(hf_name, name, dst, tensor)

    def _part(self, hf_name: str, tensor: torch.Tensor, dst: torch.Tensor, dim: int,
              part: tuple[int, int] | None, size: int) -> torch.Tensor:
        """This rank's `part` (start, length) of checkpoint tensor `tensor` along `dim` (all
        of it for None), once its whole shape is checked: `dst`'s (the rank's parameter
        slice) with `size` along `dim`. A config.json of another model size would otherwise
        have each rank copy a slice of the wrong features, or fail in narrow, where one rank
        names the field (_copy)."""
        want = list(dst.shape)
        want[dim] = size
        if list(tensor.shape) != want:
            raise self.errors.shape_error(hf_name, tensor, want)
        return tensor if part is None else tensor.narrow(dim, *part)

    def _copy(self, hf_name: str, name: str, dst: torch.Tensor, tensor: torch.Tensor) -> None:
        if tensor.dtype not in _WEIGHT_DTYPES:  # copy_ would cast its numbers as if weights
            raise ValueError(
                f"checkpoint tensor {self.errors.src(hf_name)!r} has dtype {tensor.dtype}: a "
                "quantized weight, which aiollm does not read: use a float16/bfloat16/float32 "
                "checkpoint or a GGUF file")
        if dst.shape != tensor.shape:
            raise self.errors.shape_error(hf_name, tensor, dst.shape)
        starts = self.starts.setdefault(name, set())
        if dst.storage_offset() in starts:
            raise ValueError(f"checkpoint tensor {self.errors.src(hf_name)!r} is given twice (two "
                             "files of the directory hold it, or two names of one weight)")
        starts.add(dst.storage_offset())
        dst.copy_(scaled(self.config, name, tensor))  # Granite's scalars: granite_scales.py
        self.filled[name] = self.filled.get(name, 0) + dst.numel()

    def _fill_experts(self, hf_name: str, m: re.Match, tensor: torch.Tensor) -> None:
        """One expert's projection (3 groups matched) or one projection of all experts
        (2 groups) into the layer's stacked gate_up_proj / down_proj."""
        layer, proj = m.group(1), m.group(m.lastindex)
        experts = self.expert_ranges.get(layer)
        if experts is None or proj not in _EXPERT_PROJ:
            raise self.errors.no_place(hf_name, m.group(0))
        half = _EXPERT_PROJ[proj]
        name = f"layers.{layer}.mlp.experts.{'down_proj' if half is None else 'gate_up_proj'}"
        param = self.params[name].data
        if m.lastindex == 3:  # one expert
            e = int(m.group(2))
            if e >= self.num_experts:
                raise ValueError(f"checkpoint tensor {self.errors.src(hf_name)!r} is of expert "
                                 f"{e}, but {self.errors.expert_count()} (experts 0 to "
                                 f"{self.num_experts - 1}){self.errors.advice()}")
            if e not in experts:
                return  # held by another expert-parallel rank
            dst = param[e - experts.start]
        else:
            self.expert_layout = "stacked"
            if tensor.shape[0] != self.num_experts:
                raise ValueError(f"checkpoint tensor {self.errors.src(hf_name)!r} stacks "
                                 f"{tensor.shape[0]} experts, but {self.errors.expert_count()}"
                                 f"{self.errors.advice()}")
            dst, tensor = param, tensor[experts.start:experts.stop]
        if half is not None:
            rows = dst.shape[-2] // 2
            dst = dst.narrow(-2, half * rows, rows)
        if self.sharded:  # the rank's features: gate/up rows, down columns
            tensor = self._part(hf_name, tensor, dst, -1 if half is None else -2,
                                self.expert_features, self.expert_size)
        self._copy(hf_name, name, dst, tensor)

    def check_complete(self) -> None:
        """Raise ValueError naming (up to 5 of) the checkpoint tensors never given."""
        missing = [t for n, p in self.params.items() if self.filled.get(n, 0) != p.numel()
                   for t in self._missing_parts(n, p)]
        if missing:
            # q, k and v of a fused checkpoint tensor (Phi-3's) are one name of its
            missing = list(dict.fromkeys(self.errors.src(n) for n in missing))
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            names = missing[:5]
            why = (" (config.json's tie_word_embeddings is false: true reads the output "
                   "layer from the embeddings)" if "lm_head.weight" in names else "")
            raise ValueError(f"checkpoint is missing weights: {', '.join(names)}{more}{why}")

    def _missing_parts(self, name: str, param: torch.Tensor) -> list[str]:
        """transformers' names of the parts of parameter `name` never written: which of
        q/k/v, gate/up, which expert (Mixtral's naming or Qwen's, as the checkpoint's), or
        which stacked projection when the checkpoint stacks its experts."""
        written = {s - param.storage_offset() for s in self.starts.get(name, ())}
        base, _, kind = name.rpartition(".")
        row = param[0].numel()
        parts: list[tuple[int, str]]  # (offset of the part in the parameter, its name)
        # GraniteMoe's checkpoints hold each projection of all experts in one tensor, gate and
        # up together (input_linear), whatever layout its down projection was read as
        granite = self.architecture == "granitemoe" and not self.gguf
        if base.endswith(".experts") and (self.expert_layout == "fused" or granite):
            parts = [(0, name)]
        elif base.endswith(".experts") and self.expert_layout == "stacked":
            # one copy per projection of all experts, begun at expert 0's gate or up half
            parts = [(0, f"{base}.gate_proj.weight"), (row // 2, f"{base}.up_proj.weight")] \
                if kind == "gate_up_proj" else [(0, f"{base}.down_proj.weight")]
        elif base.endswith(".experts"):  # one part per expert (and half)
            first = self.expert_ranges[name.split(".")[1]].start
            halves = ((0, "gate_proj", "w1"), (1, "up_proj", "w3")) if kind == "gate_up_proj" \
                else ((0, "down_proj", "w2"),)
            block = base.replace(".mlp.", ".block_sparse_moe.") if self.mixtral_names else base
            parts = [(e * row + h * row // 2,
                      f"{block}.{e + first}.{w if self.mixtral_names else q}.weight")
                     for e in range(param.shape[0]) for h, q, w in halves]
        elif base.endswith(".qkv_proj"):
            cols = param[0].numel()
            q, kv = self.shards["k_proj"][1], self.shards["v_proj"][2][1]
            stem = base.removesuffix("qkv_proj")
            parts = [(0, f"{stem}q_proj.{kind}"), (q * cols, f"{stem}k_proj.{kind}"),
                     ((q + kv) * cols, f"{stem}v_proj.{kind}")]
        elif base.endswith("gate_up_proj"):
            stem = base.removesuffix("gate_up_proj")
            parts = [(0, f"{stem}gate_proj.{kind}"),
                     (param.numel() // 2, f"{stem}up_proj.{kind}")]
        else:
            parts = [(0, name)]
        names = [f"model.{n}" if not n.startswith("lm_head") else n
                 for offset, n in parts if offset not in written]
        if granite:  # its checkpoint's names
            names = [re.sub(r"\.mlp\.(gate\.weight|experts\.gate_up_proj|experts\.down_proj)$",
                            lambda m: ".block_sparse_moe." + _GRANITE_MOE_SOURCE[m[1]], n)
                     for n in names]
        return names or [name]  # every part begun, yet a count short: name the parameter
