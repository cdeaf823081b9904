import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Gateways started by tests serve HTTP only where a test asks (a port of its own), and no key from
# the developer's shell leaks into them.
os.environ["MINEDRAFT_HTTP_PORT"] = "0"
os.environ.pop("MINEDRAFT_API_KEY", None)


@pytest.fixture(scope="session")
def llama_pair(tmp_path_factory):
    from model_factory import save_pair

    return save_pair(tmp_path_factory.mktemp("llama_pair"), "llama")
