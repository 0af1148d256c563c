"""The pattern-workspace product: feedback batches run as multi-phase agent executions."""
