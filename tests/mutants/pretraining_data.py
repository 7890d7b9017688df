"""Planted bugs for the chapter 06 data exercises (MinHash and LSH): each must lose points when graded.

Each entry is a plausible mistake a student makes, written as the student would
(in the solution cell, with the names the notebook's setup cell imports).
"""

MUTANTS = {
    "minhash_signature": {
        "max_instead_of_min": '''
def minhash_signature(shingle_hashes, a, b):
    x = np.asarray(shingle_hashes, dtype=np.int64)
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if x.size == 0:
        raise ValueError("no shingles")
    return ((a[:, None] * x[None, :] + b[:, None]) % PRIME).max(axis=1)
''',
        "no_modulo": '''
def minhash_signature(shingle_hashes, a, b):
    x = np.asarray(shingle_hashes, dtype=np.int64)
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if x.size == 0:
        raise ValueError("no shingles")
    return (a[:, None] * x[None, :] + b[:, None]).min(axis=1)
''',
        "float_arithmetic": '''
def minhash_signature(shingle_hashes, a, b):
    x = np.asarray(shingle_hashes, dtype=np.float64)
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no shingles")
    return np.fmod(a[:, None] * x[None, :] + b[:, None], PRIME).min(axis=1).astype(np.int64)
''',
        "min_over_the_wrong_axis": '''
def minhash_signature(shingle_hashes, a, b):
    x = np.asarray(shingle_hashes, dtype=np.int64)
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if x.size == 0:
        raise ValueError("no shingles")
    return ((a[:, None] * x[None, :] + b[:, None]) % PRIME).min(axis=0)
''',
        "modulo_before_adding_b": '''
def minhash_signature(shingle_hashes, a, b):
    x = np.asarray(shingle_hashes, dtype=np.int64)
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if x.size == 0:
        raise ValueError("no shingles")
    return ((a[:, None] * x[None, :]) % PRIME + b[:, None]).min(axis=1)
''',
        "keeps_the_input_dtype": '''
def minhash_signature(shingle_hashes, a, b):
    x, a, b = np.asarray(shingle_hashes), np.asarray(a), np.asarray(b)
    if x.size == 0:
        raise ValueError("no shingles")
    return ((a[:, None] * x[None, :] + b[:, None]) % PRIME).min(axis=1)
''',
        "one_loop_per_shingle_forgets_b": '''
def minhash_signature(shingle_hashes, a, b):
    if len(shingle_hashes) == 0:
        raise ValueError("no shingles")
    signature = []
    for ai in a:
        signature.append(min((int(ai) * int(x)) % PRIME for x in shingle_hashes))
    return np.array(signature, dtype=np.int64)
''',
        "empty_set_returns_prime": '''
def minhash_signature(shingle_hashes, a, b):
    x = np.asarray(shingle_hashes, dtype=np.int64)
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if x.size == 0:
        return np.full(len(a), PRIME, dtype=np.int64)
    return ((a[:, None] * x[None, :] + b[:, None]) % PRIME).min(axis=1)
''',
    },
    "lsh_candidate_pairs": {
        "interleaved_bands": '''
def lsh_candidate_pairs(signatures, bands, rows):
    signatures = np.asarray(signatures)
    if bands * rows != signatures.shape[1]:
        raise ValueError("bands x rows must equal the signature length")
    pairs = set()
    for t in range(bands):
        buckets = defaultdict(list)
        for i, row in enumerate(signatures[:, t::bands]):
            buckets[tuple(row.tolist())].append(i)
        for members in buckets.values():
            pairs.update(itertools.combinations(members, 2))
    return sorted(pairs)
''',
        "bands_and_rows_swapped": '''
def lsh_candidate_pairs(signatures, bands, rows):
    signatures = np.asarray(signatures)
    if bands * rows != signatures.shape[1]:
        raise ValueError("bands x rows must equal the signature length")
    pairs = set()
    for t in range(rows):
        buckets = defaultdict(list)
        for i, row in enumerate(signatures[:, t * bands:(t + 1) * bands]):
            buckets[tuple(row.tolist())].append(i)
        for members in buckets.values():
            pairs.update(itertools.combinations(members, 2))
    return sorted(pairs)
''',
        "every_band_must_agree": '''
def lsh_candidate_pairs(signatures, bands, rows):
    signatures = np.asarray(signatures)
    if bands * rows != signatures.shape[1]:
        raise ValueError("bands x rows must equal the signature length")
    buckets = defaultdict(list)
    for i, row in enumerate(signatures):
        buckets[tuple(row.tolist())].append(i)
    pairs = set()
    for members in buckets.values():
        pairs.update(itertools.combinations(members, 2))
    return sorted(pairs)
''',
        "pairs_listed_once_per_band": '''
def lsh_candidate_pairs(signatures, bands, rows):
    signatures = np.asarray(signatures)
    if bands * rows != signatures.shape[1]:
        raise ValueError("bands x rows must equal the signature length")
    pairs = []
    for t in range(bands):
        buckets = defaultdict(list)
        for i, row in enumerate(signatures[:, t * rows:(t + 1) * rows]):
            buckets[tuple(row.tolist())].append(i)
        for members in buckets.values():
            pairs.extend(itertools.combinations(members, 2))
    return sorted(pairs)
''',
        "both_orders": '''
def lsh_candidate_pairs(signatures, bands, rows):
    signatures = np.asarray(signatures)
    if bands * rows != signatures.shape[1]:
        raise ValueError("bands x rows must equal the signature length")
    pairs = set()
    for t in range(bands):
        buckets = defaultdict(list)
        for i, row in enumerate(signatures[:, t * rows:(t + 1) * rows]):
            buckets[tuple(row.tolist())].append(i)
        for members in buckets.values():
            pairs.update(itertools.permutations(members, 2))
    return sorted(pairs)
''',
        "single_rows_instead_of_bands": '''
def lsh_candidate_pairs(signatures, bands, rows):
    signatures = np.asarray(signatures)
    if bands * rows != signatures.shape[1]:
        raise ValueError("bands x rows must equal the signature length")
    pairs = set()
    for column in range(signatures.shape[1]):
        buckets = defaultdict(list)
        for i, value in enumerate(signatures[:, column].tolist()):
            buckets[value].append(i)
        for members in buckets.values():
            pairs.update(itertools.combinations(members, 2))
    return sorted(pairs)
''',
        "no_length_check": '''
def lsh_candidate_pairs(signatures, bands, rows):
    signatures = np.asarray(signatures)
    pairs = set()
    for t in range(bands):
        buckets = defaultdict(list)
        for i, row in enumerate(signatures[:, t * rows:(t + 1) * rows]):
            buckets[tuple(row.tolist())].append(i)
        for members in buckets.values():
            pairs.update(itertools.combinations(members, 2))
    return sorted(pairs)
''',
    },
}
