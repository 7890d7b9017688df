"""Planted bugs for the chapter 13 exercises: each must lose points when graded.

Each entry is a plausible mistake a student makes, written as the student would (in the
solution cell, with the notebook's imports: copy, torch, dist, nn, F, shard_batch).
"""

MUTANTS = {
    "average_gradients": {
        "skips_only_frozen_parameters": '''
def average_gradients(model, world_size, all_reduce=None):
    all_reduce = all_reduce or dist.all_reduce
    for p in model.parameters():
        if not p.requires_grad:
            continue
        all_reduce(p.grad)
        p.grad /= world_size
''',
        "sums_without_dividing": '''
def average_gradients(model, world_size, all_reduce=None):
    all_reduce = all_reduce or dist.all_reduce
    for p in model.parameters():
        if p.grad is not None:
            all_reduce(p.grad)
''',
        "reduces_a_copy": '''
def average_gradients(model, world_size, all_reduce=None):
    all_reduce = all_reduce or dist.all_reduce
    for p in model.parameters():
        if p.grad is not None:
            all_reduce(p.grad / world_size)
''',
        "uses_the_return_value": '''
def average_gradients(model, world_size, all_reduce=None):
    all_reduce = all_reduce or dist.all_reduce
    for p in model.parameters():
        if p.grad is not None:
            p.grad = all_reduce(p.grad) / world_size
''',
        "averages_the_weights": '''
def average_gradients(model, world_size, all_reduce=None):
    all_reduce = all_reduce or dist.all_reduce
    for p in model.parameters():
        all_reduce(p.data)
        p.data /= world_size
''',
        "does_not_skip_missing_gradients": '''
def average_gradients(model, world_size, all_reduce=None):
    all_reduce = all_reduce or dist.all_reduce
    for p in model.parameters():
        all_reduce(p.grad)
        p.grad /= world_size
''',
    },
    "data_parallel_gradients": {
        "whole_batch_gradient": '''
def data_parallel_gradients(model, loss_fn, inputs, targets, world_size):
    # with a mean loss and equal slices, the ranks' average is the whole batch's gradient
    replica = copy.deepcopy(model)
    loss_fn(replica, inputs, targets).backward()
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in replica.parameters()]
''',
        "sums_the_ranks": '''
def data_parallel_gradients(model, loss_fn, inputs, targets, world_size):
    total = [torch.zeros_like(p) for p in model.parameters()]
    for rank in range(world_size):
        replica = copy.deepcopy(model)
        loss_fn(replica, shard_batch(inputs, rank, world_size), shard_batch(targets, rank, world_size)).backward()
        for t, p in zip(total, replica.parameters()):
            if p.grad is not None:
                t += p.grad
    return total
''',
        "one_model_never_zeroed": '''
def data_parallel_gradients(model, loss_fn, inputs, targets, world_size):
    replica = copy.deepcopy(model)
    total = [torch.zeros_like(p) for p in model.parameters()]
    for rank in range(world_size):
        loss_fn(replica, shard_batch(inputs, rank, world_size), shard_batch(targets, rank, world_size)).backward()
        for t, p in zip(total, replica.parameters()):
            if p.grad is not None:
                t += p.grad
    return [t / world_size for t in total]
''',
        "only_rank_zero": '''
def data_parallel_gradients(model, loss_fn, inputs, targets, world_size):
    replica = copy.deepcopy(model)
    loss_fn(replica, shard_batch(inputs, 0, world_size), shard_batch(targets, 0, world_size)).backward()
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in replica.parameters()]
''',
        "none_for_unused_parameters": '''
def data_parallel_gradients(model, loss_fn, inputs, targets, world_size):
    grads = None
    for rank in range(world_size):
        replica = copy.deepcopy(model)
        loss_fn(replica, shard_batch(inputs, rank, world_size), shard_batch(targets, rank, world_size)).backward()
        these = [p.grad for p in replica.parameters()]
        grads = these if grads is None else [None if a is None else a + b for a, b in zip(grads, these)]
    return [None if g is None else g / world_size for g in grads]
''',
        "divides_by_the_batch_size": '''
def data_parallel_gradients(model, loss_fn, inputs, targets, world_size):
    total = [torch.zeros_like(p) for p in model.parameters()]
    for rank in range(world_size):
        replica = copy.deepcopy(model)
        loss_fn(replica, shard_batch(inputs, rank, world_size), shard_batch(targets, rank, world_size)).backward()
        for t, p in zip(total, replica.parameters()):
            if p.grad is not None:
                t += p.grad
    return [t / len(inputs) for t in total]
''',
    },
    "memory_per_device": {
        "param_and_grad_bytes_swapped": '''
def memory_per_device(n_params, n_devices, strategy="ddp", param_bytes=2, grad_bytes=2, optimizer_bytes=12):
    if strategy == "ddp":
        per_param = param_bytes + grad_bytes + optimizer_bytes
    elif strategy == "zero1":
        per_param = param_bytes + grad_bytes + optimizer_bytes / n_devices
    elif strategy == "zero2":
        per_param = grad_bytes + (param_bytes + optimizer_bytes) / n_devices
    elif strategy == "fsdp":
        per_param = (param_bytes + grad_bytes + optimizer_bytes) / n_devices
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    return n_params * per_param
''',
        "fsdp_keeps_full_parameters": '''
def memory_per_device(n_params, n_devices, strategy="ddp", param_bytes=2, grad_bytes=2, optimizer_bytes=12):
    if strategy == "ddp":
        per_param = param_bytes + grad_bytes + optimizer_bytes
    elif strategy == "zero1":
        per_param = param_bytes + grad_bytes + optimizer_bytes / n_devices
    else:
        per_param = param_bytes + (grad_bytes + optimizer_bytes) / n_devices
    return n_params * per_param
''',
        "zero1_shards_gradients_too": '''
def memory_per_device(n_params, n_devices, strategy="ddp", param_bytes=2, grad_bytes=2, optimizer_bytes=12):
    if strategy == "ddp":
        per_param = param_bytes + grad_bytes + optimizer_bytes
    elif strategy in ("zero1", "zero2"):
        per_param = param_bytes + (grad_bytes + optimizer_bytes) / n_devices
    else:
        per_param = (param_bytes + grad_bytes + optimizer_bytes) / n_devices
    return n_params * per_param
''',
        "ddp_divided_too": '''
def memory_per_device(n_params, n_devices, strategy="ddp", param_bytes=2, grad_bytes=2, optimizer_bytes=12):
    if strategy == "zero1":
        per_param = param_bytes + grad_bytes + optimizer_bytes / n_devices
    elif strategy == "zero2":
        per_param = param_bytes + (grad_bytes + optimizer_bytes) / n_devices
    else:
        per_param = (param_bytes + grad_bytes + optimizer_bytes) / n_devices
    return n_params * per_param
''',
        "hard_coded_bytes": '''
def memory_per_device(n_params, n_devices, strategy="ddp", param_bytes=2, grad_bytes=2, optimizer_bytes=12):
    per_param = {"ddp": 16, "zero1": 4 + 12 / n_devices, "zero2": 2 + 14 / n_devices, "fsdp": 16 / n_devices}
    return n_params * per_param[strategy]
''',
        "stages_in_the_wrong_order": '''
def memory_per_device(n_params, n_devices, strategy="ddp", param_bytes=2, grad_bytes=2, optimizer_bytes=12):
    if strategy == "ddp":
        per_param = param_bytes + grad_bytes + optimizer_bytes
    elif strategy == "zero1":
        per_param = param_bytes / n_devices + grad_bytes + optimizer_bytes
    elif strategy == "zero2":
        per_param = (param_bytes + grad_bytes) / n_devices + optimizer_bytes
    else:
        per_param = (param_bytes + grad_bytes + optimizer_bytes) / n_devices
    return n_params * per_param
''',
    },
}
