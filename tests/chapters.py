"""The graded chapters and their planted bugs: every grader test runs over this registry.

A chapter is registered by its folder name under ``solutions/`` and the module in
``tests/mutants/`` that holds its ``MUTANTS = {function_name: {bug_name: source}}``.
By convention a solution cell's grade id is the name of the function it defines,
and its test cells are ``test_<name>`` (visible) and ``test_<name>_hidden``.
`tests/test_graders.py::test_every_solution_folder_is_registered` makes sure no
chapter in ``solutions/`` escapes these tests.
"""

from importlib import import_module
from importlib.util import find_spec
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

REGISTERED = {
    "01_neural_networks": "tests.mutants.neural_networks",
    "02_tokenization": "tests.mutants.tokenization",
    "03_embeddings": "tests.mutants.embeddings",
    "04_attention": "tests.mutants.attention",
    "05_transformer": "tests.mutants.transformer",
    "06_pretraining": "tests.mutants.pretraining",
    "07_scaling_laws": "tests.mutants.scaling_laws",
    "08_generation": "tests.mutants.generation",
    "09_efficient_inference": "tests.mutants.efficient_inference",
    "10_mixture_of_experts": "tests.mutants.mixture_of_experts",
    "11_fine_tuning": "tests.mutants.fine_tuning",
    "12_alignment": "tests.mutants.alignment",
    "13_training_at_scale": "tests.mutants.training_at_scale",
    "14_failures": "tests.mutants.failures",
}

# Chapters being written have no notebook or planted bugs yet; they join when both exist.
CHAPTERS = {
    chapter: module
    for chapter, module in REGISTERED.items()
    if (ROOT / "solutions" / chapter).is_dir() and find_spec(module) is not None
}


def mutants(chapter: str) -> dict[str, dict[str, str]]:
    return import_module(CHAPTERS[chapter]).MUTANTS
