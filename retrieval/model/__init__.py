"""The trained model: shared space, fusion heads, checkpoint io and the runtime that loads them."""
