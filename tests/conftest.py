import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config):
    # Two cores are shared by the pytest workers: one thread each avoids oversubscription stalls.
    torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption(
        "--all-mutants",
        action="store_true",
        help="grade every planted bug with real nbgrader (default: three per function; "
        "the in-process test always runs every one)",
    )
