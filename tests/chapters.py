"""The graded chapters and their planted bugs: every grader test runs over this registry.

A chapter is registered by its folder name under ``solutions/`` and the module in
``tests/mutants/`` that holds its ``MUTANTS = {function_name: {bug_name: source}}``.
By convention a solution cell's grade id is the name of the function it defines,
and its test cells are ``test_<name>`` (visible) and ``test_<name>_hidden``.
"""

from importlib import import_module

CHAPTERS = {
    "02_tokenization": "tests.mutants.tokenization",
    "03_embeddings": "tests.mutants.embeddings",
    "04_attention": "tests.mutants.attention",
    "05_transformer": "tests.mutants.transformer",
    "06_pretraining": "tests.mutants.pretraining",
    "07_scaling_laws": "tests.mutants.scaling_laws",
    "08_generation": "tests.mutants.generation",
}


def mutants(chapter: str) -> dict[str, dict[str, str]]:
    return import_module(CHAPTERS[chapter]).MUTANTS
