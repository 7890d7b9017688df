"""Planted bugs for the chapter 02 exercises: each must lose points when graded.

Each entry is a plausible mistake a student makes, written as the student would
(in the solution cell, using the notebook's other functions).
"""

MUTANTS = {
    "get_pair_counts": {
        "digits_of_a_string": '''
def get_pair_counts(ids):
    text = "".join(str(i) for i in ids)
    counts = {}
    for a, b in zip(text, text[1:]):
        pair = (int(a), int(b))
        counts[pair] = counts.get(pair, 0) + 1
    return counts
''',
        "crashes_on_empty": '''
def get_pair_counts(ids):
    counts = {}
    prev = ids[0]
    for x in ids[1:]:
        counts[(prev, x)] = counts.get((prev, x), 0) + 1
        prev = x
    return counts
''',
        "misses_last_pair": '''
def get_pair_counts(ids):
    counts = {}
    for i in range(len(ids) - 2):
        pair = (ids[i], ids[i + 1])
        counts[pair] = counts.get(pair, 0) + 1
    return counts
''',
        "presence_not_count": '''
def get_pair_counts(ids):
    return {pair: 1 for pair in zip(ids, ids[1:])}
''',
        "reversed_pairs": '''
def get_pair_counts(ids):
    counts = {}
    for a, b in zip(ids, ids[1:]):
        counts[(b, a)] = counts.get((b, a), 0) + 1
    return counts
''',
        "wraps_around": '''
def get_pair_counts(ids):
    counts = {}
    for i in range(len(ids)):
        pair = (ids[i], ids[(i + 1) % len(ids)])
        counts[pair] = counts.get(pair, 0) + 1
    return counts
''',
    },
    "merge": {
        "string_replace_single_digit_ids": '''
def merge(ids, pair, new_id):
    text = " ".join(str(i) for i in ids)
    text = text.replace(f"{pair[0]} {pair[1]}", str(new_id))
    return [int(t) for t in text.split()]
''',
        "overlapping": '''
def merge(ids, pair, new_id):
    out = []
    for i in range(len(ids)):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
        elif i > 0 and (ids[i - 1], ids[i]) == pair:
            continue
        else:
            out.append(ids[i])
    return out
''',
        "first_occurrence_only": '''
def merge(ids, pair, new_id):
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == pair:
            return ids[:i] + [new_id] + ids[i + 2:]
    return list(ids)
''',
        "drops_last_id": '''
def merge(ids, pair, new_id):
    out = []
    i = 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out
''',
        "modifies_input": '''
def merge(ids, pair, new_id):
    i = 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == pair:
            ids[i:i + 2] = [new_id]
        i += 1
    return ids
''',
    },
    "train": {
        "first_seen_pair_on_ties": '''
def train(text, vocab_size):
    chunks = [list(c.encode("utf-8")) for c in pretokenize(text)]
    merges = {}
    for new_id in range(256, vocab_size):
        counts = {}
        for chunk in chunks:
            for pair, n in get_pair_counts(chunk).items():
                counts[pair] = counts.get(pair, 0) + n
        if not counts:
            break
        best = max(counts, key=counts.get)
        merges[best] = new_id
        chunks = [merge(chunk, best, new_id) for chunk in chunks]
    return merges
''',
        "ties_compared_as_text": '''
def train(text, vocab_size):
    chunks = [list(c.encode("utf-8")) for c in pretokenize(text)]
    merges = {}
    for new_id in range(256, vocab_size):
        counts = {}
        for chunk in chunks:
            for pair, n in get_pair_counts(chunk).items():
                counts[pair] = counts.get(pair, 0) + n
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], str(p)))
        merges[best] = new_id
        chunks = [merge(chunk, best, new_id) for chunk in chunks]
    return merges
''',
        "largest_pair_on_ties": '''
def train(text, vocab_size):
    chunks = [list(c.encode("utf-8")) for c in pretokenize(text)]
    merges = {}
    for new_id in range(256, vocab_size):
        counts = {}
        for chunk in chunks:
            for pair, n in get_pair_counts(chunk).items():
                counts[pair] = counts.get(pair, 0) + n
        if not counts:
            break
        best = max(counts, key=lambda p: (counts[p], p))
        merges[best] = new_id
        chunks = [merge(chunk, best, new_id) for chunk in chunks]
    return merges
''',
        "crosses_chunks": '''
def train(text, vocab_size):
    ids = list(text.encode("utf-8"))
    merges = {}
    for new_id in range(256, vocab_size):
        counts = get_pair_counts(ids)
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges[best] = new_id
        ids = merge(ids, best, new_id)
    return merges
''',
        "ids_start_at_255": '''
def train(text, vocab_size):
    chunks = [list(c.encode("utf-8")) for c in pretokenize(text)]
    merges = {}
    for new_id in range(255, vocab_size - 1):
        counts = {}
        for chunk in chunks:
            for pair, n in get_pair_counts(chunk).items():
                counts[pair] = counts.get(pair, 0) + n
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges[best] = new_id
        chunks = [merge(chunk, best, new_id) for chunk in chunks]
    return merges
''',
        "counts_each_chunk_once": '''
def train(text, vocab_size):
    chunks = [list(c.encode("utf-8")) for c in set(pretokenize(text))]
    chunks.sort()
    merges = {}
    for new_id in range(256, vocab_size):
        counts = {}
        for chunk in chunks:
            for pair, n in get_pair_counts(chunk).items():
                counts[pair] = counts.get(pair, 0) + n
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges[best] = new_id
        chunks = [merge(chunk, best, new_id) for chunk in chunks]
    return merges
''',
    },
    "encode": {
        "merges_in_dict_order": '''
def encode(text, merges):
    ids = []
    for chunk in pretokenize(text):
        chunk_ids = list(chunk.encode("utf-8"))
        for pair, new_id in merges.items():
            chunk_ids = merge(chunk_ids, pair, new_id)
        ids.extend(chunk_ids)
    return ids
''',
        "highest_rank_first": '''
def encode(text, merges):
    ids = []
    for chunk in pretokenize(text):
        chunk_ids = list(chunk.encode("utf-8"))
        while len(chunk_ids) >= 2:
            counts = get_pair_counts(chunk_ids)
            known = [p for p in counts if p in merges]
            if not known:
                break
            pair = max(known, key=lambda p: merges[p])
            chunk_ids = merge(chunk_ids, pair, merges[pair])
        ids.extend(chunk_ids)
    return ids
''',
        "no_pretokenize": '''
def encode(text, merges):
    ids = list(text.encode("utf-8"))
    while len(ids) >= 2:
        counts = get_pair_counts(ids)
        pair = min(counts, key=lambda p: merges.get(p, float("inf")))
        if pair not in merges:
            break
        ids = merge(ids, pair, merges[pair])
    return ids
''',
        "code_points_not_bytes": '''
def encode(text, merges):
    ids = []
    for chunk in pretokenize(text):
        chunk_ids = [ord(ch) for ch in chunk]
        while len(chunk_ids) >= 2:
            counts = get_pair_counts(chunk_ids)
            pair = min(counts, key=lambda p: merges.get(p, float("inf")))
            if pair not in merges:
                break
            chunk_ids = merge(chunk_ids, pair, merges[pair])
        ids.extend(chunk_ids)
    return ids
''',
        "single_pass": '''
def encode(text, merges):
    ids = []
    for chunk in pretokenize(text):
        chunk_ids = list(chunk.encode("utf-8"))
        counts = get_pair_counts(chunk_ids)
        for pair in sorted(counts, key=lambda p: merges.get(p, float("inf"))):
            if pair in merges:
                chunk_ids = merge(chunk_ids, pair, merges[pair])
        ids.extend(chunk_ids)
    return ids
''',
    },
    "decode": {
        "vocab_of_single_merges": '''
def decode(ids, merges):
    vocab = {i: bytes([i]) for i in range(256)}
    for (a, b), new_id in merges.items():
        vocab[new_id] = bytes([a % 256]) + bytes([b % 256])
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")
''',
        "strict_utf8": '''
def decode(ids, merges):
    vocab = {i: bytes([i]) for i in range(256)}
    for (a, b), new_id in sorted(merges.items(), key=lambda item: item[1]):
        vocab[new_id] = vocab[a] + vocab[b]
    return b"".join(vocab[i] for i in ids).decode("utf-8")
''',
        "per_token_decode": '''
def decode(ids, merges):
    vocab = {i: bytes([i]) for i in range(256)}
    for (a, b), new_id in sorted(merges.items(), key=lambda item: item[1]):
        vocab[new_id] = vocab[a] + vocab[b]
    return "".join(vocab[i].decode("utf-8", errors="replace") for i in ids)
''',
        "drops_invalid_bytes": '''
def decode(ids, merges):
    vocab = {i: bytes([i]) for i in range(256)}
    for (a, b), new_id in sorted(merges.items(), key=lambda item: item[1]):
        vocab[new_id] = vocab[a] + vocab[b]
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="ignore")
''',
        "vocab_in_dict_order": '''
def decode(ids, merges):
    vocab = {i: bytes([i]) for i in range(256)}
    for (a, b), new_id in merges.items():
        vocab[new_id] = vocab.get(a, b"?") + vocab.get(b, b"?")
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")
''',
    },
}
