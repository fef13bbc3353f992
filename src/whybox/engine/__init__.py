"""Scale: influence scores computed chunk by chunk into a zarr store that a stopped run resumes,
locally or on a Dask cluster."""

from whybox.engine.store import score_to_store

__all__ = ["score_to_store"]
