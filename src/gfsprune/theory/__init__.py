"""The paper's two-layer (mean-field) experiment."""
