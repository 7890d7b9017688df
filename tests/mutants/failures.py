"""Planted bugs for the chapter 14 exercises: each must lose points when graded.

Each entry is a plausible mistake a student makes, written as the student would
(in the solution cell).
"""

MUTANTS = {
    "retrieval_prompt": {
        "facts_indexed_by_n_keys": '''
def retrieval_prompt(keys, values, query_index, n_keys, n_values):
    n_facts = n_keys * n_values
    facts = [k * max(n_keys, n_values) + v for k, v in zip(keys, values)]
    ids = facts + [n_facts + n_keys + n_values, n_facts + keys[query_index]]
    return torch.tensor(ids, dtype=torch.long), n_facts + n_keys + int(values[query_index])
''',
        "fact_times_n_keys": '''
def retrieval_prompt(keys, values, query_index, n_keys, n_values):
    F = n_keys * n_values
    ids = [k * n_keys + v for k, v in zip(keys, values)] + [F + n_keys + n_values, F + keys[query_index]]
    return torch.tensor(ids, dtype=torch.long), F + n_keys + values[query_index]
''',
        "two_tokens_per_fact": '''
def retrieval_prompt(keys, values, query_index, n_keys, n_values):
    F = n_keys * n_values
    ids = []
    for k, v in zip(keys, values):
        ids += [F + k, F + n_keys + v]
    ids += [F + n_keys + n_values, F + keys[query_index]]
    return torch.tensor(ids, dtype=torch.long), F + n_keys + values[query_index]
''',
        "raw_key_asked": '''
def retrieval_prompt(keys, values, query_index, n_keys, n_values):
    F = n_keys * n_values
    ids = [k * n_values + v for k, v in zip(keys, values)] + [F + n_keys + n_values, keys[query_index]]
    return torch.tensor(ids, dtype=torch.long), F + n_keys + values[query_index]
''',
        "no_query_marker": '''
def retrieval_prompt(keys, values, query_index, n_keys, n_values):
    F = n_keys * n_values
    ids = [k * n_values + v for k, v in zip(keys, values)] + [F + keys[query_index]]
    return torch.tensor(ids, dtype=torch.long), F + n_keys + values[query_index]
''',
        "target_raw_value": '''
def retrieval_prompt(keys, values, query_index, n_keys, n_values):
    F = n_keys * n_values
    ids = [k * n_values + v for k, v in zip(keys, values)] + [F + n_keys + n_values, F + keys[query_index]]
    return torch.tensor(ids, dtype=torch.long), values[query_index]
''',
        "value_offset_forgets_keys": '''
def retrieval_prompt(keys, values, query_index, n_keys, n_values):
    F = n_keys * n_values
    ids = [k * n_values + v for k, v in zip(keys, values)] + [F + n_keys + n_values, F + keys[query_index]]
    return torch.tensor(ids, dtype=torch.long), F + values[query_index]
''',
    },
    "accuracy_by_position": {
        "compares_as_float32": '''
def accuracy_by_position(predictions, targets, positions, n_positions):
    correct = (predictions.float() == targets.float()).float()
    totals = torch.zeros(n_positions).index_add_(0, positions, correct)
    counts = torch.zeros(n_positions).index_add_(0, positions, torch.ones_like(correct))
    return totals / counts
''',
        "divides_by_all_examples": '''
def accuracy_by_position(predictions, targets, positions, n_positions):
    correct = (predictions == targets).double()
    acc = torch.zeros(n_positions, dtype=torch.float64)
    for p in range(n_positions):
        acc[p] = correct[positions == p].sum() / len(correct)
    return acc
''',
        "zero_for_empty": '''
def accuracy_by_position(predictions, targets, positions, n_positions):
    correct = (predictions == targets).double()
    acc = torch.zeros(n_positions, dtype=torch.float64)
    for p in range(n_positions):
        here = positions == p
        if here.any():
            acc[p] = correct[here].mean()
    return acc
''',
        "counts_not_fractions": '''
def accuracy_by_position(predictions, targets, positions, n_positions):
    correct = (predictions == targets).double()
    return torch.zeros(n_positions, dtype=torch.float64).index_add_(0, positions, correct)
''',
        "bincount_drops_trailing": '''
def accuracy_by_position(predictions, targets, positions, n_positions):
    correct = (predictions == targets).double()
    return torch.bincount(positions, weights=correct) / torch.bincount(positions)
''',
        "error_rate": '''
def accuracy_by_position(predictions, targets, positions, n_positions):
    wrong = (predictions != targets).double()
    totals = torch.zeros(n_positions, dtype=torch.float64).index_add_(0, positions, wrong)
    counts = torch.zeros(n_positions, dtype=torch.float64).index_add_(0, positions, torch.ones_like(wrong))
    return totals / counts
''',
    },
    "expected_calibration_error": {
        "bins_closed_on_the_right": '''
def expected_calibration_error(probs, correct, n_bins):
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    index = torch.bucketize(probs.double(), edges[1:-1])
    ece = 0.0
    for b in range(n_bins):
        here = index == b
        if here.any():
            accuracy = correct[here].double().mean()
            confidence = probs[here].double().mean()
            ece += here.sum().item() / len(probs) * abs(accuracy - confidence).item()
    return ece
''',
        "ceil_minus_one": '''
def expected_calibration_error(probs, correct, n_bins):
    index = (probs.double() * n_bins).ceil().long().sub(1).clamp(0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        here = index == b
        if here.any():
            accuracy = correct[here].double().mean()
            confidence = probs[here].double().mean()
            ece += here.sum().item() / len(probs) * abs(accuracy - confidence).item()
    return ece
''',
        "unweighted_mean": '''
def expected_calibration_error(probs, correct, n_bins):
    index = (probs.double() * n_bins).floor().long().clamp(0, n_bins - 1)
    gaps = []
    for b in range(n_bins):
        here = index == b
        if here.any():
            gaps.append((correct[here].double().mean() - probs[here].double().mean()).abs())
    return float(torch.stack(gaps).mean())
''',
        "no_abs": '''
def expected_calibration_error(probs, correct, n_bins):
    index = (probs.double() * n_bins).floor().long().clamp(0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        here = index == b
        if here.any():
            ece += here.sum().item() / len(probs) * (correct[here].double().mean() - probs[here].double().mean()).item()
    return ece
''',
        "global_gap": '''
def expected_calibration_error(probs, correct, n_bins):
    return abs(correct.double().mean().item() - probs.double().mean().item())
''',
        "one_lost_at_edge": '''
def expected_calibration_error(probs, correct, n_bins):
    index = (probs.double() * n_bins).floor().long()
    ece = 0.0
    for b in range(n_bins):
        here = index == b
        if here.any():
            ece += here.sum().item() / len(probs) * abs(correct[here].double().mean() - probs[here].double().mean()).item()
    return ece
''',
        "nan_from_empty_bins": '''
def expected_calibration_error(probs, correct, n_bins):
    index = (probs.double() * n_bins).floor().long().clamp(0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        here = index == b
        ece += here.sum().item() / len(probs) * abs(correct[here].double().mean() - probs[here].double().mean()).item()
    return ece
''',
    },
}
