"""Controllers the sandbox runs in place of kube-controller-manager (only those the project needs)."""
