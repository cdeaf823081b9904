import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def llama_pair(tmp_path_factory):
    from model_factory import save_pair

    return save_pair(tmp_path_factory.mktemp("llama_pair"), "llama")
