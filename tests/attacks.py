"""Submissions that try to earn points they should not, by attack class, several variants each.

Each entry is (chapter, function, cell source): the source replaces the function's
solution cell. Every one must lose that function's points, in-process
(tests/test_grading_attacks.py) and under real ``nbgrader autograde`` (the slow test
there grades them all in one batch per chapter). Sources may use ``{solution}``:
the reference solution cell, so that an attack that is blocked cannot fall back on
an honest answer.
"""

from __future__ import annotations

# --------------------------------------------------------------------------- the reference, by another route
REFERENCE_ROUTES = {
    "dotted_path": ("02_tokenization", "merge",
                    "import llm_course.bpe\ndef merge(ids, pair, new_id):\n    return llm_course.bpe.merge(ids, pair, new_id)\n"),
    "helper": ("02_tokenization", "merge",
               "def _helper(*args):\n    import llm_course.bpe as b\n    return b.merge(*args)\n\n"
               "def merge(ids, pair, new_id):\n    return _helper(ids, pair, new_id)\n"),
    "importlib_built_name": ("02_tokenization", "decode",
                             "import importlib\ndef decode(ids, merges):\n"
                             "    module = importlib.import_module('llm_' + 'course' + '.b' + 'pe')\n"
                             "    return getattr(module, 'de' + 'code')(ids, merges)\n"),
    "sys_modules": ("02_tokenization", "get_pair_counts",
                    "import sys\ndef get_pair_counts(ids):\n    import llm_course.bpe\n"
                    "    return vars(sys.modules['llm_course.' + 'bpe'])['get_pair_' + 'counts'](ids)\n"),
    "exec_getsource": ("02_tokenization", "merge",
                       "import inspect, importlib\ndef merge(ids, pair, new_id):\n"
                       "    source = inspect.getsource(importlib.import_module('llm_course.bpe').merge)\n"
                       "    scope = {}\n    exec(source, scope)\n    return scope['merge'](ids, pair, new_id)\n"),
    "exec_compiled_as_own_cell": ("02_tokenization", "merge",
                                  "import inspect, llm_course.bpe\ndef merge(ids, pair, new_id):\n"
                                  "    code = compile(inspect.getsource(llm_course.bpe.merge), merge.__code__.co_filename, 'exec')\n"
                                  "    scope = {}\n    exec(code, scope)\n    return scope['merge'](ids, pair, new_id)\n"),
    "other_course_function": ("02_tokenization", "train",
                              "def train(text, vocab_size):\n    from llm_course.tokenizer import Tokenizer\n"
                              "    return dict(Tokenizer.train(text, vocab_size).merges)\n"),
    "course_function_by_getattr": ("08_generation", "top_p_filter",
                                   "def top_p_filter(logits, top_p):\n    import llm_course\n"
                                   "    return getattr(getattr(llm_course, 'sampl' + 'ing'), 'top_p_' + 'filter')(logits, top_p)\n"),
    "gae_helper_full_path": ("12_alignment", "gae",
                             "def _advantages(*args):\n    import llm_course.ppo\n    return llm_course.ppo.gae(*args)\n\n"
                             "def gae(rewards, values, mask, gamma=1.0, lam=0.95):\n    return _advantages(rewards, values, mask, gamma, lam)\n"),
    "dpo_exec_getsource": ("12_alignment", "dpo_loss",
                           "import inspect\nimport llm_course.dpo as _dpo\n"
                           "def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):\n"
                           "    scope = dict(vars(_dpo))\n    exec(inspect.getsource(_dpo.dpo_loss), scope)\n"
                           "    return scope['dpo_loss'](policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)\n"),
    "module_file_copy": ("14_failures", "expected_calibration_error",
                         "import importlib.util, shutil, tempfile, os\nimport llm_course.failures\n"
                         "def expected_calibration_error(probs, correct, n_bins):\n"
                         "    path = os.path.join(tempfile.mkdtemp(), 'mine.py')\n"
                         "    shutil.copy(llm_course.failures.__file__, path)\n"
                         "    spec = importlib.util.spec_from_file_location('mine', path)\n"
                         "    module = importlib.util.module_from_spec(spec)\n    spec.loader.exec_module(module)\n"
                         "    return module.expected_calibration_error(probs, correct, n_bins)\n"),
    "routing_via_moe_layer": ("10_mixture_of_experts", "top_k_routing",
                              "from llm_course import moe as _m\n"
                              "def top_k_routing(logits, k, renormalize=True):\n"
                              "    return getattr(_m, 'top_k_' + 'routing')(logits, k, renormalize)\n"),
    "average_gradients_reference": ("13_training_at_scale", "average_gradients",
                                    "def average_gradients(model, world_size, all_reduce=None):\n"
                                    "    import importlib\n"
                                    "    return importlib.import_module('llm_course.distributed').average_gradients(model, world_size, all_reduce)\n"),
    "rope_full_path": ("03_embeddings", "apply_rope",
                       "def apply_rope(x, positions, base=10000.0):\n    import llm_course.rope\n"
                       "    return llm_course.rope.apply_rope(x, positions, base)\n"),
}

# --------------------------------------------------------------------------- a library routine the exercise forbids
LIBRARY_ROUTINES = {
    "sdpa_full_path": ("04_attention", "scaled_dot_product_attention",
                       "import torch\ndef scaled_dot_product_attention(q, k, v, mask=None):\n"
                       "    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)\n"),
    "sdpa_getattr_in_helper": ("04_attention", "scaled_dot_product_attention",
                               "import torch\ndef _go(*a, **k):\n    f = getattr(torch.nn.functional, 'scaled_dot_' + 'product_attention')\n"
                               "    return f(*a, **k)\n\ndef scaled_dot_product_attention(q, k, v, mask=None):\n"
                               "    return _go(q, k, v, attn_mask=mask)\n"),
    "sdpa_aten": ("04_attention", "scaled_dot_product_attention",
                  "import torch\ndef scaled_dot_product_attention(q, k, v, mask=None):\n"
                  "    return torch.ops.aten.scaled_dot_product_attention(q, k, v, mask)\n"),
    "cross_entropy_F": ("06_pretraining", "cross_entropy",
                        "import torch.nn.functional as F\ndef cross_entropy(logits, targets, ignore_index=-100):\n"
                        "    return F.cross_entropy(logits, targets, ignore_index=ignore_index)\n"),
    "cross_entropy_method": ("06_pretraining", "cross_entropy",
                             "def cross_entropy(logits, targets, ignore_index=-100):\n"
                             "    logp = logits.log_softmax(-1)\n    keep = targets != ignore_index\n"
                             "    return -logp[keep].gather(-1, targets[keep].unsqueeze(-1)).mean()\n"),
    "cross_entropy_module": ("06_pretraining", "cross_entropy",
                             "import torch\ndef cross_entropy(logits, targets, ignore_index=-100):\n"
                             "    return torch.nn.CrossEntropyLoss(ignore_index=ignore_index)(logits, targets)\n"),
    "adamw_torch": ("06_pretraining", "adamw_step",
                    "import torch\ndef adamw_step(param, grad, m, v, step, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):\n"
                    "    p = torch.nn.Parameter(param.detach().clone())\n    p.grad = grad.clone()\n"
                    "    opt = torch.optim.AdamW([p], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)\n"
                    "    state = opt.state[p]\n    state['step'] = torch.tensor(float(step - 1))\n"
                    "    state['exp_avg'] = m.clone()\n    state['exp_avg_sq'] = v.clone()\n    opt.step()\n"
                    "    return p.detach(), state['exp_avg'], state['exp_avg_sq']\n"),
    "layer_norm_getattr": ("05_transformer", "layer_norm",
                           "import torch\ndef layer_norm(x, weight=None, bias=None, eps=1e-5):\n"
                           "    f = getattr(torch.nn.functional, 'layer' + '_norm')\n"
                           "    return f(x, x.shape[-1:], weight, bias, eps)\n"),
    "temperature_hf_warper": ("08_generation", "apply_temperature",
                              "def apply_temperature(logits, temperature):\n"
                              "    from transformers.generation.logits_process import TemperatureLogitsWarper\n"
                              "    return TemperatureLogitsWarper(temperature)(None, logits)\n"),
    "clip_grad_torch": ("06_pretraining", "clip_grad_norm",
                        "import torch\ndef clip_grad_norm(grads, max_norm):\n"
                        "    ps = [torch.nn.Parameter(g.clone()) for g in grads]\n    for p, g in zip(ps, grads):\n"
                        "        p.grad = g.clone()\n    total = torch.nn.utils.clip_grad_norm_(ps, max_norm)\n"
                        "    return [p.grad for p in ps], total\n"),
}

# --------------------------------------------------------------------------- capabilities, from inside the graded function
CAPABILITIES = {
    "settrace_inside": ("02_tokenization", "decode",
                        "import sys\n{solution}\n_decode = decode\ndef decode(ids, merges):\n"
                        "    sys.settrace(lambda *a: None)\n    return _decode(ids, merges)\n"),
    "setprofile_caught": ("02_tokenization", "decode",
                          "import sys\n{solution}\n_decode = decode\ndef decode(ids, merges):\n"
                          "    try:\n        sys.setprofile(None)\n    except BaseException:\n        pass\n"
                          "    return _decode(ids, merges)\n"),
    "getframe_patch_caller": ("02_tokenization", "decode",
                              "import sys\n{solution}\n_decode = decode\ndef decode(ids, merges):\n"
                              "    sys._getframe(1).f_globals['fail'] = lambda *a, **k: None\n    return _decode(ids, merges)\n"),
    "rebind_global_checks": ("02_tokenization", "decode",
                             "{solution}\n_decode = decode\ndef decode(ids, merges):\n"
                             "    global checks\n    checks = None\n    return _decode(ids, merges)\n"),
    "patch_torch_inside": ("04_attention", "scaled_dot_product_attention",
                           "import torch\n{solution}\n_sdpa = scaled_dot_product_attention\n"
                           "def scaled_dot_product_attention(q, k, v, mask=None):\n"
                           "    torch.allclose = lambda *a, **k: True\n    return _sdpa(q, k, v, mask)\n"),
    "gc_objects": ("02_tokenization", "decode",
                   "import gc\n{solution}\n_decode = decode\ndef decode(ids, merges):\n"
                   "    gc.get_objects()\n    return _decode(ids, merges)\n"),
    "thread": ("02_tokenization", "decode",
               "import threading\n{solution}\n_decode = decode\ndef decode(ids, merges):\n"
               "    threading.Thread(target=lambda: None).start()\n    return _decode(ids, merges)\n"),
    "ipython_inside": ("02_tokenization", "decode",
                       "{solution}\n_decode = decode\ndef decode(ids, merges):\n"
                       "    from IPython import get_ipython\n    ip = get_ipython()\n"
                       "    if ip is not None:\n        ip.input_transformers_cleanup.append(lambda lines: [])\n"
                       "    return _decode(ids, merges)\n"),
    "ast_transformer_inside": ("02_tokenization", "encode",
                               "{solution}\n_encode = encode\ndef encode(text, merges):\n"
                               "    import IPython\n    shell = IPython.core.interactiveshell.InteractiveShell._instance\n"
                               "    if shell is not None:\n        shell.ast_transformers.append(object())\n"
                               "    return _encode(text, merges)\n"),
    "event_hook_inside": ("02_tokenization", "encode",
                          "import sys\n{solution}\n_encode = encode\ndef encode(text, merges):\n"
                          "    shell = sys.modules.get('IPython.core.interactiveshell')\n"
                          "    shell = shell and shell.InteractiveShell._instance\n"
                          "    if shell is not None:\n        shell.events.callbacks['pre_run_cell'].append(print)\n"
                          "    return _encode(text, merges)\n"),
    "patch_builtins_inside": ("02_tokenization", "merge",
                              "import builtins\n{solution}\n_merge = merge\ndef merge(ids, pair, new_id):\n"
                              "    builtins.isinstance = lambda *a: True\n    return _merge(ids, pair, new_id)\n"),
}

# --------------------------------------------------------------------------- results that fool comparisons
RETURN_VALUES = {
    "eq_always_true": ("02_tokenization", "merge",
                       "class _Yes(list):\n    def __eq__(self, other):\n        return True\n\n"
                       "def merge(ids, pair, new_id):\n    return _Yes()\n"),
    "tensor_subclass": ("04_attention", "scaled_dot_product_attention",
                        "import torch\nclass _T(torch.Tensor):\n    @classmethod\n"
                        "    def __torch_function__(cls, func, types, args=(), kwargs=None):\n        return True\n\n"
                        "def scaled_dot_product_attention(q, k, v, mask=None):\n    return torch.zeros(1).as_subclass(_T)\n"),
    "generator": ("02_tokenization", "merge", "def merge(ids, pair, new_id):\n    return (i for i in ids)\n"),
}

# --------------------------------------------------------------------------- top-level code (only under nbgrader: the filter)
TOP_LEVEL = {
    "input_transformer": ("02_tokenization", "merge",
                          "get_ipython().input_transformers_cleanup.append(\n"
                          "    lambda lines: [l for l in lines if 'check_' not in l])\n"),
    "ast_transformer": ("02_tokenization", "merge",
                        "import ast\nclass _Strip(ast.NodeTransformer):\n    def visit_Expr(self, node):\n        return None\n\n"
                        "get_ipython().ast_transformers.append(_Strip())\n"),
    "event_hook": ("02_tokenization", "merge",
                   "import sys\nget_ipython().events.register('pre_run_cell', lambda info: sys.settrace(None))\n"
                   "def merge(ids, pair, new_id):\n    return []\n"),
    "settrace_top": ("02_tokenization", "merge",
                     "import sys\ndef _t(frame, event, arg):\n    return None\nsys.settrace(_t)\n"
                     "def merge(ids, pair, new_id):\n    return []\n"),
    "decorator_runs_code": ("02_tokenization", "merge",
                            "def _install(f):\n    get_ipython().input_transformers_cleanup.append(lambda lines: [])\n"
                            "    return f\n\n@_install\ndef merge(ids, pair, new_id):\n    return []\n"),
    "default_runs_code": ("02_tokenization", "merge",
                          "def merge(ids, pair, new_id, _=get_ipython().input_transformers_cleanup.append(lambda lines: [])):\n"
                          "    return []\n"),
    "staticmethod_alias": ("02_tokenization", "merge",
                           "from IPython import get_ipython as staticmethod\n"
                           "@staticmethod\ndef merge(ids, pair, new_id):\n    return []\n"),
}

#: Attacks that do nothing without an IPython shell: graded under nbgrader only.
NEEDS_IPYTHON = {"ast_transformer_inside", "event_hook_inside", "ipython_inside", *TOP_LEVEL}

ALL = {**REFERENCE_ROUTES, **LIBRARY_ROUTINES, **CAPABILITIES, **RETURN_VALUES, **TOP_LEVEL}
