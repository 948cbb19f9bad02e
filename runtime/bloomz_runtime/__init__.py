"""BLOOMZ inference runtime: mpirun + DeepSpeed-inference ranks behind a gRPC generate service.

The gRPC contract and the client live in ``bloomz_api``; this package holds the serving side.
"""

__version__ = "0.1.0"
