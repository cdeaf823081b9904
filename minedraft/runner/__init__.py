"""One model on one device: checkpoint loading, the native Llama/Qwen forward, the paged KV cache
and its memory budget, CUDA graphs. Knows nothing of speculation or services."""
