"""BLOOMZ inference runtime: mpirun + DeepSpeed-inference ranks behind a gRPC generate service.

Importing this package must stay cheap (no torch): the operator image imports the gRPC stubs
from bloomz_runtime.proto without the runtime's heavy dependencies.
"""

__version__ = "0.1.0"
