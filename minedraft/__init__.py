"""MineDraft: batch-parallel speculative decoding (PSD) with separate draft and target workers."""

from minedraft.spec.sampling import SamplingParams

__all__ = ["Engine", "SamplingParams", "GenerationResult"]
__version__ = "0.1.0"


def __getattr__(name):
    # The engine pulls in torch and transformers; import it only when asked for so that
    # light users (the gRPC client, `minedraft health`) start fast.
    if name in ("Engine", "GenerationResult"):
        from minedraft import engine

        return getattr(engine, name)
    raise AttributeError(name)
