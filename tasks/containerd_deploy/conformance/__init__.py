import os

# The suite forks ssh processes while gRPC channels are open; gRPC's fork handlers can abort
# those children (SIGABRT in the forked ssh). Must be set before grpc is first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
