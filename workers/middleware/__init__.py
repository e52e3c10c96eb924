"""Cross-cutting concerns of the workers, one middleware per module."""
