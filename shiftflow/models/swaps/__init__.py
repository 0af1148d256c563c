"""The SideShift product: the ``sideshift_swap`` step, its orders from intent to final status,
the swap lineage lock, and the ``price`` step.
"""
