"""Turn every host of the inventory into a containerd node.

pyinfra inventories/example.py deploy.py -y
pyinfra my-host.example.com deploy.py --data containerd_version=1.7.11 -y
"""

from containerd_deploy import containerd_node

containerd_node()
