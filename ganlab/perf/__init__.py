"""Speed options (torch.compile with fallback, whole-step CUDA graphs, device defaults); see callbacks.performance."""
