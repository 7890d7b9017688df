"""Library routines each exercise forbids, on top of the references its check names.

A check calls ``forbid_reference(fn, *references)`` with the course's own
implementations; this table adds, per check (``"<chapter module>.<check name>"``),
the routines of PyTorch and Hugging Face that would do the whole exercise. While
the student's function runs (:mod:`llm_course.grading.watch`) none of them may run,
by any route: the dotted name, an alias, a helper, ``getattr``, a class that wraps
it, ``torch.ops.aten``. Building blocks (``matmul``, ``softmax``, ``tril``,
``logsumexp``, ``topk`` ...) are not listed and stay allowed.

Entries are

- ``"torch.nn.functional.layer_norm"``: a function, class or method, by dotted path;
- ``"module:torch.optim.adamw"``: every function of that module file;
- ``"file:transformers/generation/logits_process.py"``: every function of that file of an
  installed package, found without importing it (``transformers`` is slow to import);
- ``"aten:_log_softmax"``: that ATen operator when called as ``torch.ops.aten.<op>``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any

_CROSS_ENTROPY = [
    "torch.nn.functional.cross_entropy", "torch.nn.functional.log_softmax", "torch.nn.functional.nll_loss",
    "torch.log_softmax", "torch._log_softmax", "torch.Tensor.log_softmax", "torch.special.log_softmax",
    "torch._C._nn.cross_entropy_loss", "torch._C._nn.nll_loss", "torch._C._nn.nll_loss_nd", "torch._C._nn.nll_loss2d",
    "torch.nn.CrossEntropyLoss", "torch.nn.NLLLoss", "torch.nn.LogSoftmax",
    "aten:log_softmax", "aten:_log_softmax", "aten:cross_entropy_loss", "aten:nll_loss", "aten:nll_loss_nd",
    "aten:nll_loss_forward", "aten:nll_loss2d",
]
_ATTENTION = [
    "torch.nn.functional.scaled_dot_product_attention", "torch.nn.functional.multi_head_attention_forward",
    "torch.nn.MultiheadAttention", "aten:scaled_dot_product_attention", "aten:_scaled_dot_product_attention_math",
    "aten:_scaled_dot_product_flash_attention", "aten:_scaled_dot_product_flash_attention_for_cpu",
    "aten:_scaled_dot_product_efficient_attention", "aten:_scaled_dot_product_cudnn_attention",
]
_LOGITS_WARPERS = ["file:transformers/generation/logits_process.py"]

FORBIDDEN: dict[str, list[str]] = {
    "neural_networks.check_linear_forward": ["torch.nn.functional.linear", "torch.nn.Linear", "torch.nn.functional.bilinear", "aten:linear"],
    "neural_networks.check_linear_backward": ["torch.autograd.grad", "torch.autograd.backward", "torch.Tensor.backward", "torch.func.grad", "torch.func.vjp"],
    "neural_networks.check_sgd_step": ["module:torch.optim.sgd"],
    "embeddings.check_one_hot_embedding": ["torch.nn.functional.embedding", "torch.embedding", "torch.nn.Embedding", "aten:embedding"],
    "attention.check_scaled_dot_product_attention": _ATTENTION,
    "attention.check_multi_head_attention": ["torch.nn.MultiheadAttention", "torch.nn.functional.multi_head_attention_forward"],
    "transformer.check_layer_norm": ["torch.nn.functional.layer_norm", "torch.layer_norm", "torch.native_layer_norm",
                                     "torch.nn.LayerNorm", "aten:layer_norm", "aten:native_layer_norm"],
    "transformer.check_rms_norm": ["torch.nn.functional.rms_norm", "torch.rms_norm", "torch.nn.RMSNorm", "aten:rms_norm"],
    "pretraining.check_cross_entropy": _CROSS_ENTROPY,
    "pretraining.check_adamw_step": ["module:torch.optim.adamw", "module:torch.optim.adam", "torch._fused_adamw_", "torch._fused_adam_",
                                     "aten:_fused_adamw_", "aten:_fused_adam_"],
    "pretraining.check_warmup_cosine": ["module:torch.optim.lr_scheduler"],
    "pretraining.check_clip_grad_norm": ["module:torch.nn.utils.clip_grad"],
    "generation.check_apply_temperature": _LOGITS_WARPERS,
    "generation.check_top_k_filter": _LOGITS_WARPERS,
    "generation.check_top_p_filter": _LOGITS_WARPERS,
    "generation.check_sample_next": _LOGITS_WARPERS,
    "efficient_inference.check_quantize_groupwise": ["torch.quantize_per_tensor", "torch.quantize_per_channel", "torch.fake_quantize_per_channel_affine"],
    "efficient_inference.check_dequantize_groupwise": ["torch.dequantize", "torch.Tensor.dequantize"],
    "mixture_of_experts.check_top_k_routing": ["file:transformers/models/mixtral/modeling_mixtral.py"],
    "mixture_of_experts.check_load_balancing_loss": ["file:transformers/models/mixtral/modeling_mixtral.py"],
    "mixture_of_experts.check_moe_forward": ["file:transformers/models/mixtral/modeling_mixtral.py"],
    "fine_tuning.check_lora_forward": ["module:peft"],
    "fine_tuning.check_merge_weight": ["module:peft"],
}


def _resolve(path: str) -> Any:
    """The object at a dotted path, importing the longest importable module prefix (None if absent)."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        name = ".".join(parts[:cut])
        try:
            obj = sys.modules.get(name) or importlib.import_module(name)
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def _package_file(relative: str) -> str | None:
    """Absolute path of `relative` ("pkg/sub/file.py") in an installed package, without importing it."""
    top, _, rest = relative.partition("/")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    locations = list(getattr(spec, "submodule_search_locations", None) or []) if spec else []
    return os.path.join(locations[0], rest) if locations else None


def add_rules(forbidden, key: str) -> None:
    """Add the routines listed for check `key` to a :class:`~llm_course.grading.watch.Forbidden`."""
    for entry in FORBIDDEN.get(key, ()):
        kind, _, target = entry.partition(":") if ":" in entry else ("", "", entry)
        if kind == "aten":
            forbidden.aten[target] = target
        elif kind == "file":
            path = _package_file(target)
            if path:
                forbidden.add_file(path, "routine", target)
        elif kind == "module":
            spec = None
            try:
                spec = importlib.util.find_spec(target)
            except (ImportError, ValueError):
                pass
            if spec is not None and spec.origin:
                path = spec.origin
                if os.path.basename(path) == "__init__.py":
                    path = os.path.dirname(path) + os.sep
                forbidden.add_file(path, "routine", target)
        else:
            obj = _resolve(target)
            if obj is not None:
                forbidden.add(obj, "routine", target)
